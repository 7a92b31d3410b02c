"""Tests of `teachers.MultiTeacher`: the combinations against NumPy, and
distilling an ensemble of different architectures."""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.teachers import CrossModal
from keras_distill.teachers import MultiTeacher
from keras_distill.teachers import Precomputed
from keras_distill.teachers import precompute
from tests.reference import assert_close
from tests.reference import np_log_softmax
from tests.reference import np_softmax
from tests.reference import ref_kd
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(width, name, depth=1):
    layers = [keras.Input((6,))]
    layers += [keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")
               for i in range(depth)]
    return keras.Sequential(layers + [keras.layers.Dense(3, name="logits")], name=name)


def ensemble(combine, weights=None):
    keras.utils.set_random_seed(0)
    teachers = [mlp(8, "wide"), mlp(4, "deep", depth=3)]
    return MultiTeacher(teachers, weights=weights, combine=combine), teachers


def batch(n=5):
    return np.random.default_rng(0).normal(size=(n, 6)).astype("float32") * 3


def test_mean_logits_and_mean_probabilities_match_numpy():
    x = batch()
    model, teachers = ensemble("mean_logits", weights=[3.0, 1.0])
    each = [to_np(t(x)) for t in teachers]
    assert_close(model(x), 0.75 * each[0] + 0.25 * each[1], rtol=1e-5)

    model, _ = ensemble("mean_probabilities", weights=[3.0, 1.0])
    mixture = 0.75 * np_softmax(each[0]) + 0.25 * np_softmax(each[1])
    # The output is a log-probability: its softmax is the mixture.
    assert_close(np_softmax(to_np(model(x))), mixture, rtol=1e-5)
    assert_close(model(x), np.log(mixture), rtol=1e-5, atol=1e-6)


def test_confidence_weighs_each_sample_by_each_teachers_top_probability():
    x = batch()
    model, teachers = ensemble("confidence", weights=[1.0, 2.0])
    each = [to_np(t(x)) for t in teachers]
    top = np.stack([np.exp(np_log_softmax(l)).max(-1) for l in each])  # (2, B)
    weights = np.array([1 / 3, 2 / 3])[:, None] * top
    weights /= weights.sum(0, keepdims=True)
    expected = weights[0][:, None] * each[0] + weights[1][:, None] * each[1]
    assert_close(model(x), expected, rtol=1e-5)


def test_distils_an_ensemble_and_reaches_each_teachers_layers(tmp_path):
    x, y = batch(64), np.random.default_rng(1).integers(0, 3, 64)
    model, teachers = ensemble("mean_probabilities")
    before = [to_np(v) for v in model.variables]
    distiller = keras_distill.Distiller(
        model, mlp(8, "student"),
        [KD(temperature=2.0), FitNet("wide/hidden_0", "hidden_0")],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.02), loss=SCCE)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0).history
    assert history["kd"][-1] < history["kd"][0]
    assert history["fit_net"][-1] < history["fit_net"][0]
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, to_np(v))  # the teachers do not train

    path = str(tmp_path / "ensemble.keras")
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.teacher, MultiTeacher)
    assert_close(reloaded.teacher(x), to_np(model(x)), rtol=1e-5)


def test_bad_ensembles_are_refused():
    with pytest.raises(ValueError, match="distinct names"):
        MultiTeacher([mlp(4, "same"), mlp(8, "same")])
    with pytest.raises(ValueError, match="combine"):
        MultiTeacher([mlp(4, "a")], combine="vote")
    with pytest.raises(ValueError, match="one weight"):
        MultiTeacher([mlp(4, "a"), mlp(4, "b")], weights=[1.0])
    four_classes = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4)], name="four"
    )
    with pytest.raises(ValueError, match="same number of classes"):
        MultiTeacher([mlp(4, "a"), four_classes])
    with pytest.raises(TypeError, match="list of Keras models"):
        MultiTeacher([keras.layers.Dense(3)])


# ---------------------------------------------------------------------------
# Teacher: the base class and its hooks
# ---------------------------------------------------------------------------


def test_a_teacher_subclass_gets_every_hook_of_the_distiller():
    calls = []

    class Recording(keras_distill.teachers.Teacher):
        """Doubles `inner`'s logits; shows the student the negated inputs;
        counts its training steps in a variable."""

        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner
            self.steps = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="steps"
            )

        def call(self, inputs, training=False):
            return 2.0 * self.inner(inputs, training=training)

        def student_view(self, inputs):
            return -inputs

        def check_data(self, x):
            calls.append(("data", len(x)))

        def check_student(self, student):
            if student.name != "student":
                raise ValueError("not my student")

        def update_step(self, student):
            self.steps.assign_add(1.0)

        def update_epoch(self, epoch, student):
            calls.append(("epoch", epoch))

    x, y = batch(32), np.random.default_rng(1).integers(0, 3, 32)
    inner = mlp(8, "inner")
    teacher = Recording(inner, name="recording")
    teacher(x[:1])
    assert teacher.updates_per_epoch()
    assert not keras_distill.teachers.TeacherHooks().updates_per_epoch()
    with pytest.raises(ValueError, match="not my student"):
        keras_distill.Distiller(teacher, mlp(4, "other"), KD())
    student = mlp(4, "student")
    distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)

    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert calls == [("data", 32), ("epoch", 0), ("epoch", 1)]
    assert float(teacher.steps.numpy()) == 4.0  # once per training step
    assert_close(distiller.predict(x, verbose=0), to_np(student(-x)), rtol=1e-5)

    calls.clear()
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    distiller.test_on_batch(x[:8], y[:8])
    assert calls == [("data", 32), ("data", 8)]
    assert float(teacher.steps.numpy()) == 4.0  # evaluation is no step
    t = 2.0 * to_np(inner(x)).astype("float64")
    s = to_np(student(-x)).astype("float64")
    np.testing.assert_allclose(logs["kd"], ref_kd(t, s, 2.0).mean(), rtol=1e-4)

    calls.clear()
    distiller.begin_epoch(5)
    distiller.train_on_batch(x[:8], y[:8])
    assert calls == [("epoch", 5), ("data", 8)]
    assert float(teacher.steps.numpy()) == 5.0


# ---------------------------------------------------------------------------
# CrossModal
# ---------------------------------------------------------------------------


def two_views(n=64):
    """Paired views of each sample: 6 'pixel' values and 4 'coefficients'
    computed from them; labels from the pixels."""
    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(n, 6)).astype("float32")
    coefficients = (pixels @ rng.normal(size=(6, 4))).astype("float32")
    return {"pixels": pixels, "coefficients": coefficients}, pixels[:, :3].argmax(-1)


def coefficient_student():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden_0"),
         keras.layers.Dense(3, name="logits")], name="student",
    )


def test_cross_modal_student_sees_only_its_own_view(tmp_path):
    x, y = two_views()
    keras.utils.set_random_seed(0)
    teacher = CrossModal(mlp(8, "pixel_teacher"), "pixels", "coefficients")
    distiller = keras_distill.Distiller(
        teacher, coefficient_student(),
        [KD(temperature=2.0), FitNet("pixel_teacher/hidden_0", "hidden_0")],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.02), loss=SCCE)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0).history
    assert history["kd"][-1] < history["kd"][0]
    # The Distiller predicts with the student on its view.
    assert_close(distiller.predict(x, verbose=0),
                 to_np(distiller.student(x["coefficients"])), rtol=1e-5)
    assert_close(teacher(x), to_np(teacher.teacher(x["pixels"])), rtol=1e-5)

    path = str(tmp_path / "cross_modal.keras")
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.teacher.student_input == "coefficients"
    assert_close(reloaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                 rtol=1e-5)


def test_cross_modal_views_may_be_derived_by_callables():
    x, _ = two_views(5)
    teacher = CrossModal(
        mlp(8, "pixel_teacher"),
        teacher_input=lambda d: d["pixels"] * 2.0,
        student_input=lambda d: d["coefficients"],
    )
    assert_close(teacher(x), to_np(teacher.teacher(x["pixels"] * 2.0)), rtol=1e-5)
    np.testing.assert_array_equal(teacher.student_view(x), x["coefficients"])


def test_cross_modal_bad_keys_are_explained():
    x, _ = two_views(5)
    teacher = CrossModal(mlp(8, "pixel_teacher"), "pixels", "fourier")
    with pytest.raises(ValueError, match=r"keys \['pixels', 'coefficients'\]"):
        teacher.student_view(x)
    with pytest.raises(TypeError, match="dict key"):
        CrossModal(mlp(8, "t"), 3, "coefficients")


# ---------------------------------------------------------------------------
# precompute and Precomputed
# ---------------------------------------------------------------------------


def test_precompute_in_memory_on_disk_and_top_k(tmp_path):
    x = batch(10)
    teacher = mlp(8, "teacher")
    expected = to_np(teacher(x))
    outputs = precompute(teacher, x, batch_size=4)
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-6)

    on_disk = precompute(teacher, x, batch_size=3, path=str(tmp_path / "out"))
    assert isinstance(on_disk["logits"], np.memmap)
    np.testing.assert_allclose(on_disk["logits"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="exists"):
        precompute(teacher, x, path=str(tmp_path / "out"))

    top = precompute(teacher, x, top_k=2)
    order = np.argsort(-expected, axis=-1)[:, :2]
    np.testing.assert_array_equal(top["top_classes"], order)
    np.testing.assert_allclose(
        top["top_logits"], np.take_along_axis(expected, order, -1), rtol=1e-5
    )


def test_precomputed_teacher_gives_the_live_teachers_losses():
    x, y = batch(32), np.random.default_rng(3).integers(0, 3, 32)
    teacher = mlp(8, "teacher")
    keras.utils.set_random_seed(0)
    student = mlp(4, "student")

    def evaluate(teacher_model, data):
        distiller = keras_distill.Distiller(
            teacher_model, keras.models.clone_model(student), KD(temperature=2.0)
        )
        distiller.student.set_weights(student.get_weights())
        distiller.compile(loss=SCCE)
        return distiller.evaluate(data, y, batch_size=8, verbose=0, return_dict=True)

    live = evaluate(teacher, x)
    stored = evaluate(Precomputed(), {"inputs": x, **precompute(teacher, x)})
    np.testing.assert_allclose(stored["kd"], live["kd"], rtol=1e-5)
    np.testing.assert_allclose(stored["loss"], live["loss"], rtol=1e-5)

    # Top-k logits: the teacher's distribution renormalised over its k best
    # classes (the others get probability 0).
    top = Precomputed(num_classes=3)({"inputs": x, **precompute(teacher, x, top_k=2)})
    logits = to_np(teacher(x))
    kept = np.argsort(-logits, -1)[:, :2]
    mask = np.zeros_like(logits, bool)
    np.put_along_axis(mask, kept, True, -1)
    expected = np.where(mask, np_softmax(np.where(mask, logits, -np.inf)), 0.0)
    assert_close(np_softmax(to_np(top)), expected, rtol=1e-5, atol=1e-7)
    # ... at any temperature.
    assert np.all(np_softmax(to_np(top) / 4.0)[~mask] == 0.0)
    with pytest.raises(ValueError, match="num_classes"):
        Precomputed()({"inputs": x, **precompute(teacher, x, top_k=2)})



def test_precomputed_outputs_that_do_not_match_the_data_are_refused():
    x, y = batch(12), np.arange(12) % 3
    outputs = precompute(mlp(8, "teacher"), x[:10])
    distiller = keras_distill.Distiller(Precomputed(), mlp(4, "student"), KD())
    distiller.compile(loss=SCCE)
    with pytest.raises(ValueError, match=r"counts are \{'inputs': 12, 'logits': 10\}"):
        distiller.fit({"inputs": x, **outputs}, y, verbose=0)
    with pytest.raises(ValueError, match=r"counts are"):
        distiller.evaluate({"inputs": x, **outputs}, y, verbose=0)
    with pytest.raises(ValueError, match="received keys \\['features', 'logits'\\]"):
        distiller.fit({"features": x[:10], **outputs}, y[:10], verbose=0)
    with pytest.raises(ValueError, match="pass x as a dict"):
        distiller.fit(x, y, verbose=0)

def specialist_ensemble(combine):
    keras.utils.set_random_seed(0)
    generalists = [mlp(8, "general_a"), mlp(5, "general_b")]
    specialist = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, name="logits")], name="special"
    )  # outputs: class 2, class 0, then its dustbin
    teachers = [*generalists, specialist]
    return MultiTeacher(
        teachers, weights=[1.0, 3.0, 2.0], combine=combine,
        specialists={"special": [2, 0]},
    ), teachers


def test_specialists_dustbin_is_shared_out_in_proportion_to_the_generalists():
    x = batch()
    model, teachers = specialist_ensemble("mean_probabilities")
    general = [np_softmax(to_np(t(x))) for t in teachers[:2]]
    own = np_softmax(to_np(teachers[2](x)))  # (B, 3): class 2, class 0, dustbin
    spread = np.stack(
        [own[:, 1], own[:, 2] * np.ones(len(x)), own[:, 0]], axis=-1
    )  # class 1 is the only class outside the subset: it takes the dustbin
    assert_close(spread.sum(-1), np.ones(len(x)))
    expected = (1 / 6) * general[0] + (3 / 6) * general[1] + (2 / 6) * spread
    assert_close(np_softmax(to_np(model(x))), expected, rtol=1e-5)


def test_a_specialists_dustbin_follows_the_generalists_ratios():
    """With four classes and a specialist on {0}, classes 1-3 share its
    dustbin in the generalists' proportions."""
    keras.utils.set_random_seed(1)
    general = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4)], name="general"
    )
    special = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(2)], name="special"
    )
    model = MultiTeacher([general, special], weights=[0.0 + 1e-9, 1.0],
                         combine="mean_probabilities", specialists={"special": [0]})
    x = batch()
    g = np_softmax(to_np(general(x)))
    s = np_softmax(to_np(special(x)))
    rest = g[:, 1:] / g[:, 1:].sum(-1, keepdims=True)
    expected = np.concatenate([s[:, :1], s[:, 1:] * rest], axis=-1)
    assert_close(np_softmax(to_np(model(x))), expected, rtol=1e-5, atol=1e-6)


def test_specialist_ensemble_distils_and_saves(tmp_path):
    x, y = batch(32), np.random.default_rng(1).integers(0, 3, 32)
    model, _ = specialist_ensemble("mean_logits")
    distiller = keras_distill.Distiller(model, mlp(8, "student"), KD(temperature=2.0))
    distiller.compile(optimizer="adam", loss=SCCE)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "specialists.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.teacher.specialists == {"special": [2, 0]}
    assert_close(loaded.teacher(x), to_np(model(x)), rtol=1e-5)


def test_bad_specialists_are_refused():
    general, special = mlp(8, "general"), keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(2)], name="special"
    )
    with pytest.raises(ValueError, match="not among the teachers"):
        MultiTeacher([general, special], specialists={"expert": [0]})
    with pytest.raises(ValueError, match="needs 3 outputs"):
        MultiTeacher([general, special], specialists={"special": [0, 1]})
    with pytest.raises(ValueError, match="every teacher is a specialist"):
        MultiTeacher([special], specialists={"special": [0]})
    with pytest.raises(ValueError, match="proper subset"):
        MultiTeacher([general, special], specialists={"special": [3]})
    with pytest.raises(ValueError, match="same number of classes.*specialist"):
        MultiTeacher([general, special])
    with pytest.raises(ValueError, match="weights are all 0"):
        MultiTeacher([general, special], weights=[0, 1],
                     specialists={"special": [1]})
