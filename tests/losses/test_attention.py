"""Tests of `spatial_attention`, `attention_transfer` and `AttentionTransfer`.

Every value is checked against the independent float64 NumPy references
`ref_spatial_attention` / `ref_attention_transfer` in tests/reference.py
(written from Zagoruyko & Komodakis 2017, not from the library's code), and
a few against literal numbers computed once with those references.
"""

import inspect
import warnings

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import AttentionTransfer
from keras_distill.sources import Layer
from keras_distill.taps import ForwardPass
from keras_distill.losses import attention_transfer
from keras_distill.losses import spatial_attention
from tests.reference import assert_close
from tests.reference import fit_and_evaluate
from tests.reference import grad_wrt
from tests.reference import layer_output
from tests.reference import logits
from tests.reference import np_block_mean
from tests.reference import ref_attention_transfer
from tests.reference import ref_spatial_attention
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
EXPONENTS = (1.0, 2.0, 4.0)


def fmap(shape, seed):
    return logits(shape, seed, scale=1.0)


# ---------------------------------------------------------------------------
# The functions against the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", EXPONENTS)
def test_spatial_attention_matches_reference(p):
    f = fmap((2, 4, 5, 3), 1)
    value = spatial_attention(f, p)
    assert tuple(value.shape) == (2, 4, 5)
    assert_close(value, ref_spatial_attention(f, p), rtol=1e-5)
    seq = fmap((2, 6, 3), 2)
    assert_close(spatial_attention(seq, p), ref_spatial_attention(seq, p), rtol=1e-5)


def test_spatial_attention_default_exponent_is_two():
    f = fmap((2, 3, 3, 4), 3)
    assert_close(spatial_attention(f), np.mean(f.astype("float64") ** 2, axis=-1))


@pytest.mark.parametrize("p", EXPONENTS)
def test_attention_transfer_matches_reference_same_size(p):
    t, s = fmap((3, 4, 4, 6), 4), fmap((3, 4, 4, 2), 5)
    value = attention_transfer(t, s, p)
    assert tuple(value.shape) == (3,)
    expected = ref_attention_transfer(t, s, p)
    assert np.all(expected > 1e-4)
    assert_close(value, expected, rtol=1e-4)


@pytest.mark.parametrize("p", EXPONENTS)
@pytest.mark.parametrize(
    "t_shape,s_shape",
    [
        ((3, 8, 8, 6), (3, 4, 4, 2)),  # teacher larger: the teacher is pooled
        ((3, 4, 4, 6), (3, 8, 8, 2)),  # student larger: the student is pooled
        ((3, 8, 4, 5), (3, 2, 2, 3)),  # non-square, different factors
        ((3, 6, 6, 4), (3, 2, 3, 4)),
    ],
)
def test_attention_transfer_pools_the_larger_map(p, t_shape, s_shape):
    t, s = fmap(t_shape, 6), fmap(s_shape, 7)
    assert_close(attention_transfer(t, s, p), ref_attention_transfer(t, s, p), rtol=1e-4)


def test_pooling_is_a_block_mean_of_the_attention():
    """An 8x8 teacher whose 2x2 block means equal a 4x4 student's map: loss 0."""
    s = np.abs(fmap((2, 4, 4, 1), 8)) + 0.1
    a_s = s[..., 0] ** 2
    # Spread each student attention value unevenly over its 2x2 block.
    spread = np.array([[0.5, 1.5], [1.2, 0.8]])
    a_t = np.kron(a_s, np.ones((2, 2))) * np.tile(spread, (4, 4))
    np.testing.assert_allclose(np_block_mean(a_t[:, :, :], (4, 4)), a_s, rtol=1e-6)
    t = np.sqrt(a_t)[..., None].astype("float32")
    np.testing.assert_allclose(to_np(attention_transfer(t, s.astype("float32"))), 0.0, atol=1e-7)
    # Without pooling the maps differ: nearest upsampling is not the same.
    assert np.all(to_np(attention_transfer(t, np.repeat(np.repeat(s, 2, 1), 2, 2))) > 1e-5)


def test_attention_transfer_on_sequences_matches_reference():
    t, s = fmap((3, 7, 5), 9), fmap((3, 7, 2), 10)
    for p in EXPONENTS:
        value = attention_transfer(t, s, p)
        assert tuple(value.shape) == (3,)
        assert_close(value, ref_attention_transfer(t, s, p), rtol=1e-4)


def test_equal_maps_give_zero():
    f = fmap((3, 4, 4, 3), 11)
    for p in EXPONENTS:
        np.testing.assert_allclose(to_np(attention_transfer(f, f, p)), 0.0, atol=1e-7)
        # Different channel counts, same attention (channel mean): still zero.
        doubled = np.concatenate([f, -f], axis=-1)
        np.testing.assert_allclose(to_np(attention_transfer(doubled, f, p)), 0.0, atol=1e-7)
    assert np.all(to_np(attention_transfer(f, fmap((3, 4, 4, 3), 12))) > 1e-4)


@pytest.mark.parametrize("p", EXPONENTS)
def test_invariant_to_a_positive_scale_of_either_map(p):
    t, s = fmap((3, 8, 8, 4), 13), fmap((3, 4, 4, 2), 14)
    expected = ref_attention_transfer(t, s, p)
    for scale in (0.01, 3.0, 50.0):
        assert_close(attention_transfer(t * scale, s, p), expected, rtol=1e-4)
        assert_close(attention_transfer(t, s * scale, p), expected, rtol=1e-4)


def test_non_divisible_sizes_raise():
    for t_shape, s_shape in (
        ((2, 8, 8, 3), (2, 3, 3, 3)),
        ((2, 6, 6, 3), (2, 4, 4, 3)),
        ((2, 4, 4, 3), (2, 6, 6, 3)),
        ((2, 8, 4, 3), (2, 4, 8, 3)),
    ):
        with pytest.raises(ValueError, match="divide|factor"):
            attention_transfer(fmap(t_shape, 15), fmap(s_shape, 16))
        loss = AttentionTransfer("t", "s")
        with pytest.raises(ValueError):
            loss.compute_loss(fmap(t_shape, 15), fmap(s_shape, 16))


# ---------------------------------------------------------------------------
# Literal values (computed once with ref_attention_transfer, float64, on the
# fixed maps below, and pasted here)
# ---------------------------------------------------------------------------

AT_TEACHER = ((np.arange(64).reshape(2, 4, 4, 2) % 7) - 3) / 2  # pooled 4x4 -> 2x2
AT_STUDENT = ((np.arange(24).reshape(2, 2, 2, 3) % 5) - 2) / 2
AT_LITERALS = {
    1.0: [0.005676636333019104, 0.04140428436896974],
    2.0: [0.010850722471343851, 0.07845610076904808],
}


@pytest.mark.parametrize("p", sorted(AT_LITERALS))
def test_attention_transfer_literal_values(p):
    t, s = AT_TEACHER.astype("float32"), AT_STUDENT.astype("float32")
    assert_close(attention_transfer(t, s, p), AT_LITERALS[p], rtol=1e-4)
    loss = AttentionTransfer("t", "s", p=p)
    assert_close(loss.compute_loss(t, s), np.mean(AT_LITERALS[p]), rtol=1e-4)


def test_attention_transfer_literal_weighted_value():
    t, s = AT_TEACHER.astype("float32"), AT_STUDENT.astype("float32")
    w = np.array([0.5, 2.0], "float32")
    # np.sum(ref_attention_transfer(AT_TEACHER, AT_STUDENT, 2.0) * w) / 2.
    assert_close(
        AttentionTransfer("t", "s").compute_loss(t, s, sample_weight=w),
        0.08116878138688403,
        rtol=1e-4,
    )


# ---------------------------------------------------------------------------
# The class: pairs, weighting, errors
# ---------------------------------------------------------------------------


def test_class_sums_pairs_and_honours_sample_weight():
    t1, s1 = fmap((4, 8, 8, 6), 17), fmap((4, 4, 4, 2), 18)
    t2, s2 = fmap((4, 4, 4, 8), 19), fmap((4, 4, 4, 3), 20)
    loss = AttentionTransfer(["t1", "t2"], ["s1", "s2"], p=2)
    assert loss.tap_paths("teacher") == ("t1", "t2")
    assert loss.tap_paths("student") == ("s1", "s2")
    v1, v2 = ref_attention_transfer(t1, s1, 2.0), ref_attention_transfer(t2, s2, 2.0)
    value = loss.compute_loss([t1, t2], [s1, s2])
    assert tuple(value.shape) == ()
    assert_close(value, v1.mean() + v2.mean(), rtol=1e-4)
    # Read by path from forward passes; other tapped features are ignored.
    teacher = ForwardPass(None, {"t2": t2, "t1": t1, "unused": fmap((4, 2, 2, 1), 21)})
    student = ForwardPass(None, {"s1": s1, "s2": s2})
    assert_close(loss.from_passes(teacher, student), v1.mean() + v2.mean(), rtol=1e-4)
    w = np.array([0.5, 2.0, 0.0, 1.5], "float32")
    assert_close(
        loss.from_passes(teacher, student, sample_weight=w),
        np.sum(v1 * w) / 4 + np.sum(v2 * w) / 4,
        rtol=1e-4,
    )
    # A zero weight makes a sample irrelevant.
    s1_other = s1.copy()
    s1_other[2] = fmap((4, 4, 2), 22) * 100.0
    assert_close(
        loss.compute_loss([t1, t2], [s1_other, s2], sample_weight=w),
        np.sum(v1 * w) / 4 + np.sum(v2 * w) / 4,
        rtol=1e-4,
    )


def test_deprecated_layer_list_arguments_warn_and_name_the_same_layers():
    """`teacher_layers=` / `student_layers=` (the old names) still work, with
    a DeprecationWarning naming the new argument; the new spelling warns not."""
    with pytest.warns(DeprecationWarning) as record:
        old = AttentionTransfer(teacher_layers=["t1", "t2"], student_layers=["s1", "s2"], p=4)
    messages = [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]
    assert any("teacher_layers=" in m and "pass teacher=" in m for m in messages), messages
    assert any("student_layers=" in m and "pass student=" in m for m in messages), messages
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        new = AttentionTransfer(["t1", "t2"], ["s1", "s2"], p=4)
    assert not [w for w in record if "is deprecated" in str(w.message)]
    assert old.teacher_sources == new.teacher_sources == [Layer("t1"), Layer("t2")]
    assert old.student_sources == new.student_sources == [Layer("s1"), Layer("s2")]
    assert old.get_config() == new.get_config()
    t1, s1 = fmap((3, 8, 8, 4), 60), fmap((3, 4, 4, 2), 61)
    t2, s2 = fmap((3, 4, 4, 4), 62), fmap((3, 4, 4, 2), 63)
    assert_close(
        old.compute_loss([t1, t2], [s1, s2]),
        ref_attention_transfer(t1, s1, 4.0).mean() + ref_attention_transfer(t2, s2, 4.0).mean(),
        rtol=1e-4,
    )


def test_positional_exponent_raises():
    with pytest.raises(TypeError):
        AttentionTransfer("t", "s", 2.0)  # p is keyword-only
    with pytest.raises(TypeError, match="keyword arguments"):
        AttentionTransfer(2.0)


@pytest.mark.parametrize("p", EXPONENTS)
def test_class_exponent_matches_reference(p):
    t, s = fmap((3, 8, 8, 4), 23), fmap((3, 4, 4, 2), 24)
    loss = AttentionTransfer("t", "s", p=p)
    assert_close(
        loss.compute_loss(t, s), ref_attention_transfer(t, s, p).mean(), rtol=1e-4
    )


def test_constructor_errors():
    with pytest.raises(ValueError):
        AttentionTransfer(["a", "b"], ["c"])
    with pytest.raises(ValueError):
        AttentionTransfer("a", ["b", "c"])
    with pytest.raises(ValueError):
        AttentionTransfer([], [])
    for bad in (0, 0.0, -1.0, -2):
        with pytest.raises(ValueError, match="p"):
            AttentionTransfer("a", "b", p=bad)


def test_rank_and_length_mismatches_raise():
    loss = AttentionTransfer("t", "s")
    with pytest.raises(ValueError, match="rank|shape"):
        loss.compute_loss(fmap((2, 4, 4, 3), 25), fmap((2, 16, 3), 26))
    with pytest.raises(ValueError):
        loss.compute_loss(fmap((2, 16, 3), 27), fmap((2, 4, 4, 3), 28))
    with pytest.raises(ValueError):
        loss.compute_loss(fmap((2, 16), 29), fmap((2, 16), 30))
    with pytest.raises(ValueError, match="length"):
        loss.compute_loss(fmap((2, 8, 3), 31), fmap((2, 6, 3), 32))
    # Equal lengths with different channel counts are fine.
    t, s = fmap((2, 8, 5), 33), fmap((2, 8, 3), 34)
    assert_close(
        loss.compute_loss(t, s), ref_attention_transfer(t, s).mean(), rtol=1e-4
    )


# ---------------------------------------------------------------------------
# Degenerate inputs
# ---------------------------------------------------------------------------


def test_zero_feature_maps_give_finite_values_and_gradients():
    t, s = fmap((3, 4, 4, 3), 35), fmap((3, 4, 4, 2), 36)
    s[1] = 0.0
    t[2] = 0.0
    loss = AttentionTransfer("t", "s")
    values = to_np(attention_transfer(t, s))
    assert np.all(np.isfinite(values))
    # Sample 0 is regular and matches the reference.
    assert_close(values[0], ref_attention_transfer(t[:1], s[:1])[0], rtol=1e-4)
    for name, fn, x in (
        ("student", lambda x: loss.compute_loss(t, x), s),
        ("teacher", lambda x: loss.compute_loss(x, s), t),
    ):
        assert np.isfinite(to_np(fn(keras.ops.convert_to_tensor(x)))), name
        grad = grad_wrt(fn, x)
        assert grad.shape == x.shape
        assert np.all(np.isfinite(grad)), (name, grad)
        assert np.any(grad[0] != 0.0), name


# ---------------------------------------------------------------------------
# End to end through the Distiller
# ---------------------------------------------------------------------------


def conv_model(name, conv_name, channels, strides):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(
                channels, 3, strides=strides, padding="same", activation="relu",
                name=conv_name,
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )


def test_distiller_trains_and_evaluates_attention_transfer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 64)
    teacher = conv_model("teacher", "t_conv", 8, strides=1)  # 8x8x8
    student = conv_model("student", "s_conv", 2, strides=2)  # 4x4x2
    distiller = keras_distill.Distiller(
        teacher,
        student,
        AttentionTransfer("t_conv", "s_conv"),
        student_loss_weight=0.1,
        distillation_loss_weights=[100.0],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    logs = fit_and_evaluate(distiller, x, y, "attention_transfer")
    t_map = layer_output(teacher, "t_conv", x)
    s_map = layer_output(student, "s_conv", x)
    assert t_map.shape == (64, 8, 8, 8) and s_map.shape == (64, 4, 4, 2)
    expected = ref_attention_transfer(t_map, s_map, 2.0).mean()
    assert expected > 0
    np.testing.assert_allclose(logs["attention_transfer"], expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------

CONSTRUCTIONS = [
    {"teacher": "block1", "student": "conv1", "p": 2.0,
     "input_mask": None, "name": "at"},
    {"teacher": ["b1", "b2"], "student": ["c1", "c2"], "p": 4.0,
     "input_mask": None, "name": "attention_transfer"},
]


@pytest.mark.parametrize("kwargs", CONSTRUCTIONS, ids=["one_pair", "two_pairs"])
def test_get_config_is_the_constructor_arguments(kwargs):
    config = AttentionTransfer(**kwargs).get_config()
    assert config == kwargs
    params = set(inspect.signature(AttentionTransfer.__init__).parameters) - {
        "self", "kwargs"
    }
    assert set(config) == params
    default = AttentionTransfer(kwargs["teacher"], kwargs["student"])
    assert default.get_config()["p"] == 2.0
    assert default.get_config()["name"] == "attention_transfer"


@pytest.mark.parametrize("kwargs", CONSTRUCTIONS, ids=["one_pair", "two_pairs"])
def test_serialization_round_trip(kwargs):
    loss = AttentionTransfer(**kwargs)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is AttentionTransfer
    assert restored is not loss
    assert restored.get_config() == loss.get_config() == kwargs
    assert restored.p == kwargs["p"]
    assert restored.name == kwargs["name"]
    names_t, names_s = loss.tap_paths("teacher"), loss.tap_paths("student")
    assert restored.tap_paths("teacher") == names_t
    assert restored.tap_paths("student") == names_s
    teacher = {n: fmap((3, 8, 8, 4), 40 + i) for i, n in enumerate(names_t)}
    student = {n: fmap((3, 4, 4, 2), 50 + i) for i, n in enumerate(names_s)}
    teacher, student = ForwardPass(None, teacher), ForwardPass(None, student)
    original = to_np(loss.from_passes(teacher, student))
    expected = sum(
        ref_attention_transfer(
            teacher.features[a], student.features[b], kwargs["p"]
        ).mean()
        for a, b in zip(names_t, names_s)
    )
    np.testing.assert_allclose(original, expected, rtol=1e-4)
    assert_close(restored.from_passes(teacher, student), original, rtol=0, atol=0)


def test_padded_positions_are_left_out_of_sequence_attention():
    tokens = np.array([[3, 5, 2, 0, 0], [7, 1, 0, 0, 0]], "int32")
    embed = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(9, 4, mask_zero=True)]
    )
    student = embed(tokens)
    teacher = logits((2, 5, 6), seed=3)
    loss = AttentionTransfer("t", "s")
    value = loss.compute_loss(teacher, student)

    valid = (tokens != 0).astype("float64")
    a_t = ref_spatial_attention(teacher, 2.0) * valid
    a_s = ref_spatial_attention(to_np(student), 2.0) * valid
    a_t /= np.linalg.norm(a_t, axis=-1, keepdims=True)
    a_s /= np.linalg.norm(a_s, axis=-1, keepdims=True)
    assert_close(value, np.mean((a_s - a_t) ** 2))

    changed = teacher.copy()
    changed[tokens == 0] = 100.0
    assert_close(loss.compute_loss(changed, student), to_np(value))
    # The mask may come from the inputs instead (keras-hub's padding_mask).
    plain = to_np(student).astype("float32")
    by_input = AttentionTransfer("t", "s", input_mask="padding_mask")
    assert_close(
        by_input.compute_loss(changed, plain, inputs={"padding_mask": tokens != 0}),
        to_np(value),
    )
