"""Tests of `hidden_cosine` and `HiddenCosine` (DistilBERT's cosine term).

Every value is checked against the independent float64 NumPy reference
`ref_hidden_cosine` in tests/reference.py (written from Sanh et al. 2019,
not from the library's code), and one against literal numbers computed once
with that reference.
"""

import inspect
import warnings

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill._keras_internals import get_keras_mask
from keras_distill.losses import HiddenCosine
from keras_distill.losses import hidden_cosine
from keras_distill.sources import Layer
from keras_distill.taps import ForwardPass
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import S_FIXED
from tests.reference import T_FIXED
from tests.reference import assert_close
from tests.reference import fit_and_evaluate
from tests.reference import grad_wrt
from tests.reference import layer_output
from tests.reference import logits
from tests.reference import ref_hidden_cosine
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


TOKENS = np.array([[1, 2, 3, 0, 0], [4, 5, 1, 2, 0], [3, 0, 0, 0, 0]], "int32")


def features(**tapped):
    """A forward pass whose taps recorded `tapped` (its outputs unused)."""
    return ForwardPass(None, tapped)


def embedding_model(vocab=6, width=4, seed=0):
    return keras.Sequential(
        [
            keras.Input((TOKENS.shape[1],), dtype="int32"),
            keras.layers.Embedding(
                vocab,
                width,
                mask_zero=True,
                embeddings_initializer=keras.initializers.RandomNormal(
                    stddev=1.5, seed=seed
                ),
            ),
        ]
    )


# ---------------------------------------------------------------------------
# The function against the reference
# ---------------------------------------------------------------------------


def test_hidden_cosine_matches_reference_on_vectors():
    t, s = logits((6, 5), 1), logits((6, 5), 2)
    value = hidden_cosine(t, s)
    assert tuple(value.shape) == (6,)
    assert_close(value, ref_hidden_cosine(t, s))


def test_hidden_cosine_matches_reference_on_sequences():
    t, s = logits((3, 4, 5), 3), logits((3, 4, 5), 4)
    value = hidden_cosine(t, s)
    assert tuple(value.shape) == (3, 4)
    assert_close(value, ref_hidden_cosine(t, s))


def test_hidden_cosine_direction_only():
    t = logits((6, 5), 5)
    # Same direction: 0; opposite: 2; orthogonal: 1; positive scale ignored.
    assert_close(hidden_cosine(t, t * 3.5), np.zeros(6), atol=1e-6)
    assert_close(hidden_cosine(t, -0.25 * t), np.full(6, 2.0), atol=1e-6)
    e1 = np.array([[1.0, 0.0, 0.0]], "float32")
    e2 = np.array([[0.0, 2.0, 0.0]], "float32")
    assert_close(hidden_cosine(e1, e2), [1.0])
    s = logits((6, 5), 6)
    assert_close(hidden_cosine(t * 7.0, s * 0.1), ref_hidden_cosine(t, s), rtol=1e-4)


# ---------------------------------------------------------------------------
# Literal values (computed once with ref_hidden_cosine, float64, on T_FIXED /
# S_FIXED from tests/reference.py, and pasted here)
# ---------------------------------------------------------------------------

HIDDEN_COSINE_LITERALS = [0.14476402588024206, 0.11392237043170383, 1.0650600048632355]


def test_hidden_cosine_literal_values():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    assert_close(hidden_cosine(t, s), HIDDEN_COSINE_LITERALS)
    loss = HiddenCosine("t", "s")
    assert_close(loss.compute_loss(t, s), 0.44124880039172715)


# ---------------------------------------------------------------------------
# The class: weighting, layer pairs, errors
# ---------------------------------------------------------------------------


def test_class_is_weighted_mean_on_vectors():
    t, s = logits((6, 5), 7), logits((6, 5), 8)
    values = ref_hidden_cosine(t, s)
    loss = HiddenCosine("enc", "enc_s")
    assert loss.teacher_sources == [Layer("enc")]
    assert loss.tap_paths("teacher") == ("enc",)
    assert loss.tap_paths("student") == ("enc_s",)
    value = loss.compute_loss(t, s)
    assert tuple(value.shape) == ()
    assert_close(value, values.mean())
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], "float32")
    expected = np.sum(values * w) / 6
    assert_close(loss.compute_loss(t, s, sample_weight=w), expected)
    assert_close(
        loss.compute_loss(t, s, sample_weight=w.reshape(6, 1)),
        expected,
    )


def test_class_is_weighted_mean_on_sequences():
    t, s = logits((3, 4, 5), 9), logits((3, 4, 5), 10)
    values = ref_hidden_cosine(t, s)
    w = np.array([2.0, 0.5, 0.0], "float32")
    loss = HiddenCosine("a", "b")
    assert_close(loss.compute_loss(t, s), values.mean())
    assert_close(
        loss.compute_loss(t, s, sample_weight=w),
        np.sum(values * w[:, None]) / 12,
    )


def test_zero_weight_makes_a_sample_irrelevant():
    t, s = logits((6, 5), 11), logits((6, 5), 12)
    w = np.array([1.0, 1.0, 1.0, 0.0, 2.0, 1.0], "float32")
    s_other = s.copy()
    s_other[3] = -t[3]  # the worst possible sample: 1 - cos = 2
    loss = HiddenCosine("t", "s")
    clean = to_np(loss.compute_loss(t, s, sample_weight=w))
    other = to_np(loss.compute_loss(t, s_other, sample_weight=w))
    np.testing.assert_allclose(other, clean, rtol=1e-6)
    assert not np.isclose(
        to_np(loss.compute_loss(t, s_other)),
        to_np(loss.compute_loss(t, s)),
    )


def test_several_layer_pairs_sum():
    t1, s1 = logits((6, 5), 13), logits((6, 5), 14)
    t2, s2 = logits((6, 3, 7), 15), logits((6, 3, 7), 16)
    w = np.array([1.0, 2.0, 0.5, 0.0, 1.0, 3.0], "float32")
    loss = HiddenCosine(["t1", "t2"], ["s1", "s2"])
    assert loss.tap_paths("teacher") == ("t1", "t2")
    assert loss.tap_paths("student") == ("s1", "s2")
    v1, v2 = ref_hidden_cosine(t1, s1), ref_hidden_cosine(t2, s2)
    expected = v1.mean() + v2.mean()
    weighted = np.sum(v1 * w) / 6 + np.sum(v2 * w[:, None]) / 18
    # Given directly: one tensor per pair, in order.
    assert_close(loss.compute_loss([t1, t2], [s1, s2]), expected)
    assert_close(loss.compute_loss([t1, t2], [s1, s2], sample_weight=w), weighted)
    # Read from forward passes by path; other tapped features are ignored.
    teacher = features(t1=t1, t2=t2, t3=logits((6, 5), 17))
    student = features(s2=s2, s1=s1)
    assert_close(loss.from_passes(teacher, student), expected)
    assert_close(loss.from_passes(teacher, student, sample_weight=w), weighted)
    # Each pair reads its own paths.
    assert_close(HiddenCosine("t2", "s2").from_passes(teacher, student), v2.mean())
    with pytest.raises(KeyError):
        loss.from_passes(features(t1=t1), student)


def test_width_mismatch_raises():
    loss = HiddenCosine("t", "s")
    with pytest.raises(ValueError, match="width|features"):
        loss.compute_loss(logits((4, 6), 18), logits((4, 5), 19))
    with pytest.raises(ValueError):
        HiddenCosine(["a", "b"], ["c"])
    with pytest.raises(ValueError):
        HiddenCosine([], [])


# ---------------------------------------------------------------------------
# Padding masks
# ---------------------------------------------------------------------------


def test_padded_positions_do_not_matter():
    mask = TOKENS != 0
    model = embedding_model()
    student = model(TOKENS)
    assert get_keras_mask(student) is not None, "the Embedding output lost its mask"
    s = to_np(student)
    t = logits((3, 5, 4), 20)
    values = ref_hidden_cosine(t, s)
    expected = values[mask].mean()
    assert not np.isclose(expected, values.mean())
    loss = HiddenCosine("t", "s")
    assert_close(loss.compute_loss(t, student), expected)

    # Another teacher at the padded positions: the same value.
    t_changed = t.copy()
    t_changed[~mask] = logits((int((~mask).sum()), 4), 21, scale=30.0)
    assert_close(loss.compute_loss(t_changed, student), expected)

    # Another student at the padded positions (embedding row 0): the same.
    other = embedding_model()
    weights = keras.ops.convert_to_numpy(model.layers[0].embeddings).copy()
    weights[0] = -weights[0] * 5.0 + 1.0
    other.layers[0].embeddings.assign(weights)
    student_changed = other(TOKENS)
    assert not np.allclose(to_np(student_changed)[~mask], s[~mask])
    assert_close(loss.compute_loss(t, student_changed), expected)

    # Without the mask every position counts, unless it is given.
    assert_close(loss.compute_loss(t, s.astype("float32")), values.mean())
    assert_close(loss.compute_loss(t_changed, s.astype("float32"), mask=mask), expected)
    # Read from a forward pass, the features keep their mask.
    assert_close(loss.from_passes(features(t=t_changed), features(s=student)), expected)

    # sample_weight and the mask combine: sum(v * w * mask) / sum(mask).
    w = np.array([1.0, 3.0, 0.5], "float32")
    assert_close(
        loss.compute_loss(t_changed, student, sample_weight=w),
        np.sum(values * w[:, None] * mask) / mask.sum(),
    )


# ---------------------------------------------------------------------------
# Zero vectors
# ---------------------------------------------------------------------------


def test_zero_vectors_give_finite_values_and_gradients():
    t, s = logits((4, 5), 22), logits((4, 5), 23)
    t[1] = 0.0
    s[2] = 0.0
    t[3] = 0.0
    s[3] = 0.0
    values = to_np(hidden_cosine(t, s))
    assert np.all(np.isfinite(values))
    # No direction means no agreement: cos is taken as 0.
    assert_close(values, ref_hidden_cosine(t, s))
    np.testing.assert_allclose(values[1:], 1.0, atol=1e-6)
    loss = HiddenCosine("t", "s")
    for name, fn, x in (
        ("student", lambda x: loss.compute_loss(t, x), s),
        ("teacher", lambda x: loss.compute_loss(x, s), t),
    ):
        assert np.isfinite(to_np(fn(keras.ops.convert_to_tensor(x)))), name
        grad = grad_wrt(fn, x)
        assert grad.shape == x.shape
        assert np.all(np.isfinite(grad)), (name, grad)
        # The sample with two nonzero vectors still gets a gradient.
        assert np.any(grad[0] != 0.0), name


def test_gradient_matches_closed_form():
    """d/ds (1 - t.s / (|t||s|)) = -(t / (|t||s|) - (t.s) s / (|t| |s|^3))."""
    t, s = logits((4, 5), 24).astype("float64"), logits((4, 5), 25).astype("float64")
    loss = HiddenCosine("t", "s")
    grad = grad_wrt(
        lambda x: loss.compute_loss(t.astype("float32"), x),
        s.astype("float32"),
    )
    nt = np.linalg.norm(t, axis=-1, keepdims=True)
    ns = np.linalg.norm(s, axis=-1, keepdims=True)
    dot = np.sum(t * s, axis=-1, keepdims=True)
    expected = -(t / (nt * ns) - dot * s / (nt * ns**3)) / 4
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# End to end through the Distiller
# ---------------------------------------------------------------------------


def test_distiller_trains_and_evaluates_hidden_cosine():
    x, y = classification_data(64)
    teacher, student = mlp(16, name="teacher"), mlp(16, name="student")
    distiller = keras_distill.Distiller(
        teacher,
        student,
        HiddenCosine("hidden", "hidden"),
        student_loss_weight=0.5,
        distillation_loss_weights=[1.0],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    logs = fit_and_evaluate(distiller, x, y, "hidden_cosine")
    t_hidden = layer_output(teacher, "hidden", x)
    s_hidden = layer_output(student, "hidden", x)
    expected = ref_hidden_cosine(t_hidden, s_hidden).mean()
    assert 0.0 < expected < 1.0
    np.testing.assert_allclose(logs["hidden_cosine"], expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------

CONSTRUCTIONS = [
    {"teacher": "encoder_out", "student": "enc", "input_mask": None, "name": "my_cosine"},
    {"teacher": ["t1", "t2"], "student": ["s1", "s2"], "input_mask": "padding_mask",
     "name": "hidden_cosine"},
]


@pytest.mark.parametrize("kwargs", CONSTRUCTIONS, ids=["one_pair", "two_pairs"])
def test_get_config_is_the_constructor_arguments(kwargs):
    config = HiddenCosine(**kwargs).get_config()
    assert config == kwargs
    params = set(inspect.signature(HiddenCosine.__init__).parameters) - {"self", "kwargs"}
    assert set(config) == params
    default = HiddenCosine(kwargs["teacher"], kwargs["student"]).get_config()
    assert set(default) == params
    assert default["name"] == "hidden_cosine"
    assert default["input_mask"] is None


@pytest.mark.parametrize("kwargs", CONSTRUCTIONS, ids=["one_pair", "two_pairs"])
def test_serialization_round_trip(kwargs):
    loss = HiddenCosine(**kwargs)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is HiddenCosine
    assert restored is not loss
    assert restored.get_config() == loss.get_config() == kwargs
    assert restored.name == kwargs["name"]
    assert restored.input_mask == kwargs["input_mask"]
    assert restored.tap_paths("teacher") == loss.tap_paths("teacher")
    assert restored.tap_paths("student") == loss.tap_paths("student")
    names_t, names_s = loss.tap_paths("teacher"), loss.tap_paths("student")
    teacher = {n: logits((4, 6), 30 + i) for i, n in enumerate(names_t)}
    student = {n: logits((4, 6), 40 + i) for i, n in enumerate(names_s)}
    inputs = {"padding_mask": np.ones((4,), bool)}
    original = to_np(
        loss.from_passes(features(**teacher), features(**student), inputs=inputs)
    )
    expected = sum(
        ref_hidden_cosine(teacher[a], student[b]).mean() for a, b in zip(names_t, names_s)
    )
    np.testing.assert_allclose(original, expected, rtol=1e-5)
    assert_close(
        restored.from_passes(features(**teacher), features(**student), inputs=inputs),
        original, rtol=0, atol=0,
    )


def test_deprecated_layer_arguments_warn_and_name_the_same_layers():
    """`teacher_layer=` / `student_layer=` (the old names) still work, with a
    DeprecationWarning naming the new argument; the new spelling warns not."""
    with pytest.warns(DeprecationWarning) as record:
        old = HiddenCosine(teacher_layer=["t1", "t2"], student_layer=["s1", "s2"])
    messages = [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]
    assert any("teacher_layer=" in m and "pass teacher=" in m for m in messages), messages
    assert any("student_layer=" in m and "pass student=" in m for m in messages), messages
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        new = HiddenCosine(["t1", "t2"], ["s1", "s2"])
    assert not [w for w in record if "is deprecated" in str(w.message)]
    assert old.teacher_sources == new.teacher_sources == [Layer("t1"), Layer("t2")]
    assert old.student_sources == new.student_sources == [Layer("s1"), Layer("s2")]
    assert old.get_config() == new.get_config()
    t1, t2, s1, s2 = (logits((4, 6), seed) for seed in (50, 51, 52, 53))
    assert_close(
        old.from_passes(features(t1=t1, t2=t2), features(s1=s1, s2=s2)),
        ref_hidden_cosine(t1, s1).mean() + ref_hidden_cosine(t2, s2).mean(),
    )


def test_a_nan_teacher_gives_a_nan_loss():
    t, s = logits((4, 6), 54), logits((4, 6), 55)
    loss = HiddenCosine("t", "s")
    assert np.isfinite(to_np(loss.compute_loss(t, s)))
    t[1, 2] = np.nan
    assert np.isnan(to_np(loss.compute_loss(t, s)))


def test_input_mask_reads_padding_from_the_inputs():
    # keras-hub models take their padding mask as an input, not a Keras mask.
    t, s = logits((3, 5, 4), seed=11), logits((3, 5, 4), seed=12)
    padding = TOKENS != 0
    loss = HiddenCosine("t", "s", input_mask="padding_mask")
    value = loss.compute_loss(t, s, inputs={"padding_mask": padding})
    assert_close(value, ref_hidden_cosine(t, s)[padding].mean())
    with pytest.raises(ValueError, match=r"no such key \(keys: \['token_ids'\]\)"):
        loss.compute_loss(t, s, inputs={"token_ids": TOKENS})
