"""FitNet hint regression and its learned connectors."""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.losses import connector_for
from keras_distill.taps import ForwardPass
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import assert_close
from tests.reference import logits
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize(
    "student_shape,teacher_shape,kind,kernel",
    [
        ((None, 4), (None, 16), keras.layers.Dense, None),
        ((None, 7, 4), (None, 7, 16), keras.layers.Dense, None),
        ((None, 8, 8, 4), (None, 8, 8, 16), keras.layers.Conv2D, (1, 1)),
        ((None, 8, 8, 4), (None, 4, 4, 16), keras.layers.Conv2D, (5, 5)),
        ((None, 4, 4, 4), (None, 8, 8, 16), keras.layers.Conv2DTranspose, (5, 5)),
    ],
)
def test_connector_maps_the_student_shape_to_the_teacher_shape(
    student_shape, teacher_shape, kind, kernel
):
    layer = connector_for(student_shape, teacher_shape)
    assert type(layer) is kind
    if kernel is not None:
        assert tuple(layer.kernel_size) == kernel
    layer.build(student_shape)
    assert tuple(layer.compute_output_shape(student_shape))[1:] == teacher_shape[1:]


def test_connector_refuses_shapes_it_cannot_map():
    with pytest.raises(ValueError, match="pass a Keras layer"):
        connector_for((None, 8, 4), (None, 5, 16))
    with pytest.raises(ValueError, match="pass a Keras layer"):
        connector_for((None, 8, 4, 4), (None, 4, 8, 16))


def built_fitnet(student_dim=4, teacher_dim=6, **kwargs):
    """A FitNet built as the Distiller builds it: from symbolic tensors, one
    per pair, of what its sources read."""
    loss = FitNet("t", "s", **kwargs)
    assert not loss.built
    loss.build(
        [keras.KerasTensor((None, teacher_dim))], [keras.KerasTensor((None, student_dim))]
    )
    assert loss.built
    return loss


def test_value_is_the_mse_of_the_connector_output():
    loss = built_fitnet()
    t, s = logits((5, 6), seed=1), logits((5, 4), seed=2)
    kernel, bias = (to_np(w) for w in loss.connectors[0].weights)
    mapped = s.astype(np.float64) @ kernel + bias
    per_sample = ((mapped - t) ** 2).mean(-1)
    assert_close(loss.compute_loss(t, s), per_sample.mean())
    weights = np.array([0.0, 1.0, 2.0, 0.5, 1.0], "float32")
    assert_close(
        loss.compute_loss(t, s, sample_weight=weights),
        (per_sample * weights).mean(),
    )
    # Read by path from forward passes, as the Distiller reads it.
    teacher = ForwardPass(None, {"t": t, "s": s[:, :0]})
    student = ForwardPass(None, {"s": s})
    assert_close(loss.from_passes(teacher, student), per_sample.mean())


def test_sequence_hints_leave_padded_positions_out():
    """On sequences the connector maps each position; the student's padding
    mask (carried through the connector's call) leaves padded ones out."""
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 1, 2, 0], [3, 0, 0, 0, 0]], "int32")
    embed = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(6, 4, mask_zero=True)]
    )
    student = embed(tokens)
    t = logits((3, 5, 6), seed=3)
    loss = FitNet("t", "s")
    loss.build([t], [student])  # real tensors do as well as symbolic ones
    kernel, bias = (to_np(w) for w in loss.connectors[0].weights)
    per_position = ((to_np(student) @ kernel + bias - t) ** 2).mean(-1)
    keep = tokens != 0
    assert_close(loss.compute_loss(t, student), per_position[keep].mean())
    w = np.array([1.0, 0.5, 2.0], "float32")
    assert_close(
        loss.compute_loss(t, student, sample_weight=w),
        (per_position * w[:, None] * keep).sum() / keep.sum(),
    )
    changed = t.copy()
    changed[~keep] = 100.0
    assert_close(loss.compute_loss(changed, student), per_position[keep].mean())


def test_user_connector_and_several_pairs():
    connector = keras.layers.Dense(6, use_bias=False, name="mine")
    loss = FitNet(["t1", "t2"], ["s1", "s2"], connector=[connector, "auto"])
    t1, t2, s1, s2 = (logits(shape, seed=i) for i, shape in
                      enumerate([(5, 6), (5, 3), (5, 4), (5, 4)]))
    loss.build([t1, t2], [s1, s2])
    assert loss.connectors[0] is connector
    assert isinstance(loss.connectors[1], keras.layers.Dense)
    assert tuple(loss.connectors[1].kernel.shape) == (4, 3)
    total = loss.compute_loss([t1, t2], [s1, s2])
    one = FitNet("t1", "s1", connector=connector)
    one.build([t1], [s1])
    first = one.compute_loss(t1, s1)
    mapped1 = to_np(s1) @ to_np(connector.kernel)
    assert_close(first, ((mapped1 - t1) ** 2).mean())
    mapped2 = to_np(loss.connectors[1](s2))
    assert_close(total, to_np(first) + ((mapped2 - t2) ** 2).mean())
    # Each pair goes through its own connector, in the order of the pairs.
    passes = (ForwardPass(None, {"t2": t2, "t1": t1}), ForwardPass(None, {"s2": s2, "s1": s1}))
    assert_close(loss.from_passes(*passes), to_np(total))


def test_bad_connectors_raise():
    with pytest.raises(ValueError, match="2 connectors for 1 layer pairs"):
        FitNet("t", "s", connector=["auto", "auto"])
    with pytest.raises(TypeError, match="'auto' or a Keras layer"):
        FitNet("t", "s", connector="dense")
    with pytest.raises(ValueError, match="not the teacher's"):
        built_fitnet(connector=keras.layers.Dense(5))


def test_serialization_round_trip():
    loss = FitNet(["a", "b"], ["c", "d"], connector=["auto", keras.layers.Dense(3)])
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored.get_config() == loss.get_config()
    assert set(FitNet("a", "b").get_config()) == {
        "name", "teacher", "student", "connector", "input_mask"
    }
    assert FitNet("a", "b").get_config()["teacher"] == "a"
    assert loss.get_config()["teacher"] == ["a", "b"]
    assert restored.tap_paths("student") == ("c", "d")


def test_a_nan_teacher_gives_a_nan_loss():
    loss = built_fitnet()
    t, s = logits((5, 6), seed=3), logits((5, 4), seed=4)
    assert np.isfinite(to_np(loss.compute_loss(t, s)))
    t[2, 3] = np.nan
    assert np.isnan(to_np(loss.compute_loss(t, s)))


def test_distiller_trains_saves_and_drops_the_connector(tmp_path):
    x, y = classification_data(64)
    teacher, student = mlp(16, name="teacher"), mlp(4, name="student")
    hints = FitNet("hidden", "hidden")
    distiller = keras_distill.Distiller(teacher, student, [KD(), hints])
    connector = hints.connectors[0]
    assert tuple(connector.kernel.shape) == (4, 16)
    assert {id(v) for v in connector.weights} <= {
        id(v) for v in distiller.trainable_variables
    }
    before = to_np(connector.kernel).copy()
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert history["fit_net"][-1] < history["fit_net"][0]
    assert not np.allclose(before, to_np(connector.kernel))

    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        to_np(loaded.distillation_losses[1].connectors[0].kernel),
        to_np(connector.kernel),
    )
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    logs_loaded = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs_loaded["fit_net"], logs["fit_net"], rtol=1e-5)

    distiller.export_student(tmp_path / "student.keras")
    exported = keras.saving.load_model(tmp_path / "student.keras")
    assert len(exported.weights) == len(student.weights)
