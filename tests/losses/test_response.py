"""Tests of the response-based losses: `kd`, `dkd`, `dist` and their classes.

Every value is checked against an independent float64 NumPy reference written
below from the papers' formulas (not from the library's code), and a few
against literal numbers computed once with that reference.
"""

import inspect
import math
import warnings

import keras
import numpy as np
import pytest

from keras_distill._keras_internals import get_keras_mask
from keras_distill.losses import DIST
from keras_distill.losses import DKD
from keras_distill.losses import KD
from keras_distill.losses import dist
from keras_distill.losses import dkd
from keras_distill.losses import kd
from keras_distill.losses import soft_log_probabilities
from keras_distill.sources import Output
from keras_distill.taps import ForwardPass
from keras_distill.teachers import Precomputed
from keras_distill.teachers import precompute
from tests.reference import S_FIXED
from tests.reference import T_FIXED
from tests.reference import assert_close
from tests.reference import grad_wrt
from tests.reference import logits
from tests.reference import np_soften_probabilities
from tests.reference import np_softmax
from tests.reference import ref_dist
from tests.reference import ref_dkd
from tests.reference import ref_kd
from tests.reference import ref_tckd_nckd
from tests.reference import to_np

DIVERGENCES = ("forward", "reverse", "js")
LABELS_FIXED = [1, 2, 3]


def padded_student(vocab=6, classes=4, seed=0):
    """Student logits with a Keras padding mask, and the mask as NumPy."""
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 1, 2, 0], [3, 0, 0, 0, 0]], "int32")
    model = keras.Sequential(
        [
            keras.Input((tokens.shape[1],), dtype="int32"),
            keras.layers.Embedding(
                vocab,
                classes,
                mask_zero=True,
                embeddings_initializer=keras.initializers.RandomNormal(
                    stddev=1.5, seed=seed
                ),
            ),
        ]
    )
    return model(tokens), tokens != 0


def passes(teacher_outputs, student_outputs):
    """Forward passes with these outputs and no tapped features."""
    return ForwardPass(teacher_outputs, {}), ForwardPass(student_outputs, {})


def deprecations(record):
    """The keras-distill deprecation warnings among `record`."""
    return [
        w for w in record
        if issubclass(w.category, DeprecationWarning) and "is deprecated; pass" in str(w.message)
    ]


# ---------------------------------------------------------------------------
# Functions against the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_matches_reference(divergence, temperature):
    t, s = logits((6, 4), 1), logits((6, 4), 2)
    value = kd(t, s, temperature=temperature, divergence=divergence)
    assert tuple(value.shape) == (6,)
    assert_close(value, ref_kd(t, s, temperature, divergence))


def test_kd_function_defaults_to_temperature_4_like_the_class():
    assert inspect.signature(kd).parameters["temperature"].default == 4.0
    assert inspect.signature(KD.__init__).parameters["temperature"].default == 4.0
    t, s = logits((6, 4), 64), logits((6, 4), 65)
    expected = ref_kd(t, s, 4.0)
    assert not np.allclose(expected, ref_kd(t, s, 1.0))
    assert_close(kd(t, s), expected)
    assert_close(KD().compute_loss(t, s), expected.mean())


def test_kd_matches_reference_on_sequences():
    t, s = logits((3, 5, 4), 3), logits((3, 5, 4), 4)
    value = kd(t, s, temperature=2.0)
    assert tuple(value.shape) == (3, 5)
    assert_close(value, ref_kd(t, s, 2.0))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_reference(temperature):
    t, s = logits((6, 4), 5), logits((6, 4), 6)
    labels = np.array([0, 1, 2, 3, 3, 2])
    value = dkd(t, s, labels, alpha=0.5, beta=3.0, temperature=temperature)
    assert tuple(value.shape) == (6,)
    assert_close(value, ref_dkd(t, s, labels, 0.5, 3.0, temperature))


def test_dkd_matches_reference_on_sequences():
    t, s = logits((3, 5, 4), 7), logits((3, 5, 4), 8)
    labels = np.random.default_rng(7).integers(0, 4, (3, 5))
    value = dkd(t, s, labels, alpha=1.0, beta=2.0, temperature=2.0)
    assert tuple(value.shape) == (3, 5)
    assert_close(value, ref_dkd(t, s, labels, 1.0, 2.0, 2.0))


@pytest.mark.parametrize("beta,gamma,temperature", [(1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_dist_matches_reference(beta, gamma, temperature):
    t, s = logits((6, 4), 9), logits((6, 4), 10)
    value = dist(t, s, beta=beta, gamma=gamma, temperature=temperature)
    assert tuple(value.shape) == ()
    assert_close(value, ref_dist(t, s, beta, gamma, temperature))


def test_dist_terms_match_reference_separately():
    t, s = logits((6, 4), 11), logits((6, 4), 12)
    assert_close(dist(t, s, beta=1.0, gamma=0.0), ref_dist(t, s, 1.0, 0.0))
    assert_close(dist(t, s, beta=0.0, gamma=1.0), ref_dist(t, s, 0.0, 1.0))


# ---------------------------------------------------------------------------
# Literal values (computed once with the NumPy reference above, float64, on
# T_FIXED / S_FIXED / LABELS_FIXED, and pasted here)
# ---------------------------------------------------------------------------

# ref_kd(T_FIXED, S_FIXED, 2.0, divergence) per sample.
KD_LITERALS = {
    "forward": [0.16373001069913778, 0.2849458415640721, 0.8246158498856175],
    "reverse": [0.17603836274578494, 0.31018566194226666, 0.8338736716410649],
    "js": [0.04219703239729986, 0.07360496627721032, 0.20255748363585185],
}


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_kd_literal_values(divergence):
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    expected = KD_LITERALS[divergence]
    assert_close(kd(t, s, 2.0, divergence), expected)
    loss = KD(temperature=2.0, divergence=divergence)
    assert_close(loss.compute_loss(t, s), np.mean(expected))


def test_dkd_literal_values():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    # ref_dkd(T_FIXED, S_FIXED, [1, 2, 3], alpha=1, beta=8, temperature=4).
    expected = [1.5882393807321225, 1.6504225663277392, 9.23631120575371]
    assert_close(dkd(t, s, np.array(LABELS_FIXED), 1.0, 8.0, 4.0), expected)
    loss = DKD(alpha=1.0, beta=8.0, temperature=4.0)
    value = loss.compute_loss(t, s, labels=np.array(LABELS_FIXED))
    assert_close(value, 4.15832438427119)


def test_dist_literal_values():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    # ref_dist(T_FIXED, S_FIXED) and ref_dist(..., beta=2, gamma=0.5, T=2).
    assert_close(dist(t, s), 0.7922166915822855)
    assert_close(DIST().compute_loss(t, s), 0.7922166915822855)
    assert_close(
        DIST(beta=2.0, gamma=0.5, temperature=2.0).compute_loss(t, s),
        4.367684994528155,
    )


# ---------------------------------------------------------------------------
# Equivalences and properties
# ---------------------------------------------------------------------------


def test_kd_forward_at_t1_is_cross_entropy_minus_teacher_entropy():
    t, s = logits((6, 4), 13), logits((6, 4), 14)
    p = np_softmax(t)
    cross_entropy = to_np(
        keras.losses.categorical_crossentropy(p.astype("float32"), s, from_logits=True)
    )
    teacher_entropy = -np.sum(p * np.log(p), axis=-1)
    assert_close(kd(t, s, temperature=1.0), cross_entropy - teacher_entropy)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_probability_inputs_equal_logit_inputs(temperature, divergence):
    t, s = logits((6, 4), 15), logits((6, 4), 16)
    expected = to_np(kd(t, s, temperature, divergence))
    teacher_probs = np_softmax(t).astype("float32")
    student_probs = np_softmax(s).astype("float32")
    assert_close(
        kd(t, s, temperature, divergence),
        ref_kd(t, s, temperature, divergence),
    )
    assert_close(
        kd(teacher_probs, s, temperature, divergence, teacher_from_logits=False),
        expected,
    )
    assert_close(
        kd(t, student_probs, temperature, divergence, student_from_logits=False),
        expected,
    )
    loss = KD(temperature=temperature, divergence=divergence, teacher_from_logits=False)
    assert_close(loss.compute_loss(teacher_probs, s), expected.mean())


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_black_box_zero_probabilities_stay_zero_at_every_temperature(divergence):
    """A teacher's probability of 0 is not floored: softened at T = 4 it is
    still 0 (floored at 1e-12, each of the ~995 zero classes of a row would
    get 1e-12^(1/4) = 1e-3 before renormalising: a quarter to over a third
    of the softened mass)."""
    classes = 1000
    probs = np.zeros((3, classes), "float32")
    probs[0, :2] = [0.7, 0.3]
    probs[1, [3, 10, 500]] = [0.5, 0.3, 0.2]
    probs[2, [7, 8, 9, 11, 999]] = 0.2
    soft = np.exp(to_np(soft_log_probabilities(probs, 4.0, from_logits=False)))
    np.testing.assert_array_equal(soft[probs == 0], 0.0)
    assert_close(soft, np_soften_probabilities(probs, 4.0))
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
    floored = np_soften_probabilities(np.maximum(probs, 1e-12), 4.0)
    assert np.all(np.sum(floored * (probs == 0), -1) > 0.2)  # what a floor does

    s = logits((3, classes), 66)
    expected = ref_kd(probs, s, 4.0, divergence, teacher_from_logits=False)
    assert np.all(np.isfinite(expected))
    value = kd(probs, s, 4.0, divergence, teacher_from_logits=False)
    assert_close(value, expected, rtol=1e-4)
    loss = KD(temperature=4.0, divergence=divergence, teacher_from_logits=False)
    assert_close(loss.compute_loss(probs, s), expected.mean(), rtol=1e-4)


def reverse_on_support_grad(teacher, student, temperature):
    """d/ds of the batch mean of T^2 KL(q_S || p), in closed form (float64).

    With z = s / T restricted to the support S of p and q_S = softmax(z_S):
    dKL/dz_j = q_j (log q_j - log p_j - KL) on S, 0 off it.
    """
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    support = p > 0
    z = np.where(support, np.asarray(student, np.float64) / temperature, -np.inf)
    q = np_softmax(z)
    log_ratio = np.where(support, np.log(np.where(support, q, 1.0))
                         - np.log(np.where(support, p, 1.0)), 0.0)
    kl = np.sum(q * log_ratio, -1, keepdims=True)
    return np.where(support, temperature * q * (log_ratio - kl), 0.0) / len(p)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reverse_kd_is_taken_on_the_teachers_support(temperature):
    """Where the teacher gives classes probability 0 (logits of -inf),
    KL(q || p) is infinite; it is taken as KL(q_S || p), the student
    renormalised over the classes the teacher supports: finite, of normal
    size, with a finite gradient that is 0 off the support."""
    t = logits((4, 6), 67)
    t[0, 3:] = -np.inf
    t[1, [0, 2, 5]] = -np.inf
    t[2, 1:] = -np.inf  # a single class: q_S = p, so KL = 0
    s = logits((4, 6), 68, scale=3.0)
    expected = ref_kd(t, s, temperature, "reverse")
    assert np.all(np.isfinite(expected)) and np.all(expected < 50.0)
    assert abs(expected[2]) < 1e-12 and np.all(expected[[0, 1, 3]] > 1e-3)
    value = to_np(kd(t, s, temperature, "reverse"))
    assert np.all(np.isfinite(value))
    assert_close(value, expected, rtol=1e-5, atol=1e-6)
    # Row 3 has full support: there it is the plain reverse KL.
    assert_close(value[3], plain_reverse_kd(t[3:], s[3:], temperature))

    loss = KD(temperature=temperature, divergence="reverse")
    assert_close(loss.compute_loss(t, s), expected.mean(), rtol=1e-5)
    grad = grad_wrt(lambda x: loss.compute_loss(t, x), s)
    assert np.all(np.isfinite(grad)), grad
    # Off the support the student's logits do not matter (up to float32
    # rounding: the on-support gradients are of order 0.1).
    np.testing.assert_allclose(grad[np.isinf(t)], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        grad, reverse_on_support_grad(t, s, temperature), rtol=1e-4, atol=1e-6
    )


def plain_reverse_kd(teacher, student, temperature):
    """T^2 KL(q || p) with full support, straight from the definition."""
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    q = np_softmax(np.asarray(student, np.float64) / temperature)
    return temperature**2 * np.sum(q * np.log(q / p), -1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_kd_from_a_top_k_precomputed_teacher(divergence):
    """A top-k `Precomputed` teacher gives -inf outside its top k: every
    divergence is finite, with a finite gradient, and matches the reference
    on those logits (reverse KD on the kept classes)."""
    full = logits((5, 8), 70)
    outputs = precompute(lambda x: x, full, top_k=3)
    dense = to_np(Precomputed(num_classes=8)(outputs))
    kept = np.argsort(-full, -1)[:, :3]
    np.testing.assert_array_equal(
        np.isfinite(dense), np.eye(8, dtype=bool)[kept].any(1)
    )
    s = logits((5, 8), 71)
    teacher = dense.astype("float32")
    expected = ref_kd(teacher, s, 2.0, divergence)
    assert np.all(np.isfinite(expected))
    loss = KD(temperature=2.0, divergence=divergence)
    assert_close(loss.compute_loss(teacher, s), expected.mean(), rtol=1e-5)
    grad = grad_wrt(lambda x: loss.compute_loss(teacher, x), s)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0), grad


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposes_kd(temperature):
    """Zhao et al. eq. (1): KD = TCKD + (1 - p^T_target) NCKD (no T^2)."""
    t, s = logits((6, 4), 17), logits((6, 4), 18)
    labels = np.array([0, 3, 2, 2, 1, 3])
    t2 = temperature**2
    tckd = to_np(dkd(t, s, labels, alpha=1.0, beta=0.0, temperature=temperature)) / t2
    nckd = to_np(dkd(t, s, labels, alpha=0.0, beta=1.0, temperature=temperature)) / t2
    p_target = np_softmax(t / temperature)[np.arange(6), labels]
    kd_value = to_np(kd(t, s, temperature=temperature)) / t2
    np.testing.assert_allclose(kd_value, tckd + (1 - p_target) * nckd, rtol=1e-5, atol=1e-6)
    ref_tckd, ref_nckd, _ = ref_tckd_nckd(t, s, labels, temperature)
    np.testing.assert_allclose(tckd, ref_tckd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nckd, ref_nckd, rtol=1e-5, atol=1e-6)


def test_js_is_symmetric_and_bounded():
    t, s = logits((6, 4), 19), logits((6, 4), 20)
    temperature = 2.0
    forward = to_np(kd(t, s, temperature, "js"))
    backward = to_np(kd(s, t, temperature, "js"))
    np.testing.assert_allclose(forward, backward, rtol=1e-5, atol=1e-6)
    bound = temperature**2 * math.log(2.0)
    assert np.all(forward <= bound + 1e-5)
    # Disjoint near-one-hot distributions approach the bound.
    far_t = np.array([[60.0, -60.0, -60.0]], "float32")
    far_s = np.array([[-60.0, 60.0, -60.0]], "float32")
    extreme = to_np(kd(far_t, far_s, temperature, "js"))
    assert np.all(extreme <= bound + 1e-5)
    np.testing.assert_allclose(extreme, [bound], rtol=1e-4)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_kd_is_zero_when_student_equals_teacher(divergence):
    t = logits((6, 4), 21, scale=5.0)
    np.testing.assert_allclose(to_np(kd(t, t, 3.0, divergence)), 0.0, atol=1e-6)
    # Shifting logits by a constant does not change the softmax.
    np.testing.assert_allclose(
        to_np(kd(t, t + 7.0, 3.0, divergence)), 0.0, atol=1e-5
    )
    # ...while a real difference gives a strictly positive value.
    assert np.all(to_np(kd(t, logits((6, 4), 22), 3.0, divergence)) > 1e-4)


def test_dist_is_zero_when_student_equals_teacher():
    t = logits((6, 4), 23)
    np.testing.assert_allclose(to_np(dist(t, t, temperature=2.0)), 0.0, atol=1e-5)
    assert to_np(dist(t, logits((6, 4), 24))) > 1e-2


def test_dkd_label_formats_agree():
    t, s = logits((6, 4), 25), logits((6, 4), 26)
    sparse = np.array([0, 3, 1, 2, 2, 1])
    expected = ref_dkd(t, s, sparse, 1.0, 8.0, 4.0)
    for labels in (sparse, sparse.reshape(6, 1), np.eye(4, dtype="float32")[sparse]):
        assert_close(dkd(t, s, labels, 1.0, 8.0, 4.0), expected)
        assert_close(
            DKD().compute_loss(t, s, labels=labels), expected.mean()
        )


def test_dkd_sequence_label_formats_agree():
    t, s = logits((3, 5, 4), 27), logits((3, 5, 4), 28)
    sparse = np.random.default_rng(27).integers(0, 4, (3, 5))
    expected = ref_dkd(t, s, sparse, 1.0, 8.0, 4.0)
    for labels in (sparse, sparse[..., None], np.eye(4, dtype="float32")[sparse]):
        assert_close(dkd(t, s, labels, 1.0, 8.0, 4.0), expected)


def test_dkd_without_labels_raises():
    t = logits((6, 4), 29)
    with pytest.raises(ValueError, match="labels"):
        DKD().compute_loss(t, t)


# ---------------------------------------------------------------------------
# Class API
# ---------------------------------------------------------------------------


def test_class_values_are_weighted_means_of_function_values():
    t, s = logits((6, 4), 30), logits((6, 4), 31)
    labels = np.array([0, 1, 2, 3, 0, 2])
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], "float32")
    cases = [
        (KD(temperature=2.0), ref_kd(t, s, 2.0), None),
        (KD(temperature=2.0, divergence="js"), ref_kd(t, s, 2.0, "js"), None),
        (DKD(alpha=2.0, beta=4.0, temperature=3.0), ref_dkd(t, s, labels, 2.0, 4.0, 3.0), labels),
    ]
    for loss, values, y in cases:
        value = loss.compute_loss(t, s, labels=y)
        assert tuple(value.shape) == ()
        assert_close(value, values.mean())
        assert_close(loss.compute_loss(t, s, labels=y, sample_weight=w), np.sum(values * w) / 6)
        assert_close(
            loss.compute_loss(t, s, labels=y, sample_weight=w.reshape(6, 1)),
            np.sum(values * w) / 6,
        )


def test_zero_weight_makes_a_sample_irrelevant():
    t, s = logits((6, 4), 32), logits((6, 4), 33)
    labels = np.array([0, 1, 2, 1, 3, 0])
    w = np.array([1.0, 1.0, 1.0, 0.0, 2.0, 1.0], "float32")
    t_garbage, s_garbage = t.copy(), s.copy()
    t_garbage[3] = [1e4, -1e4, 0.0, 5.0]
    s_garbage[3] = [-1e4, 1e4, 3e3, 0.0]
    for loss, y in ((KD(), None), (KD(divergence="reverse"), None), (DKD(), labels)):
        clean = to_np(loss.compute_loss(t, s, labels=y, sample_weight=w))
        garbage = to_np(loss.compute_loss(t_garbage, s_garbage, labels=y, sample_weight=w))
        np.testing.assert_allclose(garbage, clean, rtol=1e-6)
        # The weights matter: without them the garbage sample dominates.
        assert to_np(loss.compute_loss(t_garbage, s_garbage, labels=y)) > 10 * clean


@pytest.mark.parametrize(
    "make_loss",
    [KD, lambda: KD(divergence="reverse"), lambda: KD(divergence="js"),
     lambda: KD(teacher_from_logits=False), DKD, DIST],
    ids=["kd", "kd_reverse", "kd_js", "kd_probabilities", "dkd", "dist"],
)
def test_a_nan_teacher_gives_a_nan_loss(make_loss):
    """0 log 0 = 0, but NaN stays NaN: a corrupt teacher is not hidden
    behind a finite loss (the Distiller stops on a NaN log)."""
    t, s = logits((6, 4), 72), logits((6, 4), 73)
    t = np.abs(t) / np.abs(t).sum(-1, keepdims=True)  # valid as probabilities too
    labels = np.array([0, 1, 2, 3, 0, 1])
    loss = make_loss()
    assert np.isfinite(to_np(loss.compute_loss(t, s, labels=labels)))
    t[2, 1] = np.nan
    assert np.isnan(to_np(loss.compute_loss(t, s, labels=labels)))


def test_dist_zero_weight_removes_a_sample():
    t, s = logits((6, 4), 34), logits((6, 4), 35)
    w = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 0.0], "float32")
    expected = ref_dist(t, s, 1.0, 1.0, 1.0, weights=w)
    assert_close(DIST().compute_loss(t, s, sample_weight=w), expected)
    t_garbage, s_garbage = t.copy(), s.copy()
    t_garbage[5] = [50.0, -50.0, 0.0, 9.0]
    s_garbage[5] = [-50.0, 40.0, 3.0, 0.0]
    assert_close(DIST().compute_loss(t_garbage, s_garbage, sample_weight=w), expected)


def test_sequence_logits_with_class_api():
    t, s = logits((3, 5, 4), 36), logits((3, 5, 4), 37)
    labels = np.random.default_rng(36).integers(0, 4, (3, 5))
    w = np.array([2.0, 0.5, 1.0], "float32")
    kd_values = ref_kd(t, s, 2.0)
    assert_close(KD(temperature=2.0).compute_loss(t, s), kd_values.mean())
    assert_close(
        KD(temperature=2.0).compute_loss(t, s, sample_weight=w),
        np.sum(kd_values * w[:, None]) / 15,
    )
    dkd_values = ref_dkd(t, s, labels, 1.0, 8.0, 4.0)
    assert_close(DKD().compute_loss(t, s, labels=labels), dkd_values.mean())
    # DIST on sequences treats every position as a sample.
    assert_close(
        DIST().compute_loss(t, s), ref_dist(t.reshape(15, 4), s.reshape(15, 4))
    )


@pytest.mark.parametrize("make_loss", [KD, DKD, DIST])
def test_output_selects_from_dict_and_list(make_loss):
    t_a, s_a = logits((6, 4), 38), logits((6, 4), 39)
    t_b, s_b = logits((6, 4), 40), logits((6, 4), 41)
    labels = np.array([0, 1, 2, 1, 3, 3])
    expected_b = to_np(make_loss().compute_loss(t_b, s_b, labels=labels))
    expected_a = to_np(make_loss().compute_loss(t_a, s_a, labels=labels))
    assert not np.isclose(expected_a, expected_b)
    by_key = make_loss(Output("b"), Output("b")).from_passes(
        *passes({"a": t_a, "b": t_b}, {"a": s_a, "b": s_b}), labels=labels
    )
    assert_close(by_key, expected_b)
    by_index = make_loss(Output(0), Output(0)).from_passes(
        *passes([t_a, t_b], [s_a, s_b]), labels=labels
    )
    assert_close(by_index, expected_a)
    # Teacher and student outputs are chosen separately.
    crossed = make_loss(Output("a"), Output(1)).from_passes(
        *passes({"a": t_b, "b": t_a}, [s_a, s_b]), labels=labels
    )
    assert_close(crossed, expected_b)
    # A single output in a list needs no key.
    assert_close(
        make_loss().from_passes(*passes([t_a], [s_a]), labels=labels), expected_a
    )


@pytest.mark.parametrize("make_loss", [KD, DKD, DIST])
def test_deprecated_output_argument_warns_and_selects_that_output(make_loss):
    t = {"a": logits((6, 4), 38), "b": logits((6, 4), 40)}
    s = {"a": logits((6, 4), 39), "b": logits((6, 4), 41)}
    labels = np.array([0, 1, 2, 1, 3, 3])
    with pytest.warns(DeprecationWarning, match=r"output='b'.*teacher=Output\('b'\)"):
        old = make_loss(output="b")
    assert old.teacher_sources == [Output("b")] and old.student_sources == [Output("b")]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        new = make_loss(Output("b"), Output("b"))
    assert deprecations(record) == []
    assert old.get_config() == new.get_config()
    expected = to_np(make_loss().compute_loss(t["b"], s["b"], labels=labels))
    assert_close(old.from_passes(*passes(t, s), labels=labels), expected)


@pytest.mark.parametrize(
    "make_loss",
    [lambda: KD(2.0), lambda: KD(4.0, divergence="js"), lambda: DKD(1.0, 8.0),
     lambda: DIST(2.0)],
    ids=["kd", "kd_and_keyword", "dkd", "dist"],
)
def test_positional_hyperparameters_raise_naming_the_fix(make_loss):
    """The first two arguments say what to compare; a number there is a
    hyperparameter given by position, as the old API took them."""
    with pytest.raises(TypeError, match=r"keyword arguments, e\.g\. KD\(temperature=4\.0\)"):
        make_loss()


@pytest.mark.parametrize("cls", [KD, DKD, DIST])
def test_sources_come_first_and_hyperparameters_are_keyword_only(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in parameters[:2]] == ["teacher", "student"]
    assert all(
        p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters[2:]
    ), parameters
    loss = cls(None, None, temperature=2.0)
    assert loss.get_config()["temperature"] == 2.0
    with pytest.raises(TypeError):
        cls(None, None, 2.0)


def test_missing_or_wrong_output_raises_naming_outputs():
    t = {"first": logits((6, 4), 42), "second": logits((6, 4), 43)}
    with pytest.raises(ValueError, match="first") as info:
        KD().from_passes(*passes(t, t))
    assert "second" in str(info.value)
    with pytest.raises(ValueError, match="first") as info:
        KD(Output("third"), Output("third")).from_passes(*passes(t, t))
    assert "second" in str(info.value) and "third" in str(info.value)
    pair = [t["first"], t["second"]]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KD().from_passes(*passes(pair, pair))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DIST(Output(2), Output(2)).from_passes(*passes(pair, pair))
    with pytest.raises(ValueError, match="single tensor"):
        DKD(Output("first"), Output("first")).from_passes(
            *passes(t["first"], t["first"]), labels=np.zeros(6)
        )


def test_integer_output_on_a_single_tensor_raises():
    """`Output(0)` must not silently index the batch of a single-tensor output."""
    t, s = logits((6, 4), 44), logits((6, 4), 45)
    with pytest.raises(ValueError):
        KD(Output(0), Output(0)).from_passes(*passes(t, s))


@pytest.mark.parametrize("make_loss", [KD, DKD, DIST])
def test_class_count_mismatch_raises(make_loss):
    with pytest.raises(ValueError, match="3"):
        make_loss().compute_loss(
            logits((6, 3), 46), logits((6, 4), 47), labels=np.array([0, 1, 2, 0, 1, 2])
        )


@pytest.mark.parametrize("make_loss", [KD, DKD, DIST])
def test_bad_temperature_raises(make_loss):
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            make_loss(temperature=bad)
    for bad in ("3", None, True, [2.0]):
        with pytest.raises(TypeError, match="temperature"):
            make_loss(temperature=bad)
    make_loss(temperature=3)  # an int is a number


def test_unknown_divergence_raises():
    with pytest.raises(ValueError, match="kl"):
        KD(divergence="kl")
    t = logits((6, 4), 48)
    with pytest.raises(ValueError, match="forward"):
        kd(t, t, divergence="symmetric")


def test_bad_sources_raise():
    for bad in (["a"], True, 1.5):
        with pytest.raises(TypeError, match="Output"):
            Output(bad)
    with pytest.raises(TypeError, match="received"):
        KD(teacher={"a": 1})
    with pytest.raises(ValueError, match="one to one"):
        KD(Output("a"), [Output("a"), Output("b")])


# ---------------------------------------------------------------------------
# Padding masks
# ---------------------------------------------------------------------------


def test_embedding_output_carries_a_mask():
    student, mask = padded_student()
    carried = get_keras_mask(student)
    assert carried is not None, "the Embedding output lost its Keras mask"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(carried), mask)


def test_kd_ignores_padded_positions():
    student, mask = padded_student()
    t = logits((3, 5, 4), 49)
    s = to_np(student)
    values = ref_kd(t, s, 2.0)
    expected = values[mask].mean()
    loss = KD(temperature=2.0)
    assert_close(loss.compute_loss(t, student), expected)
    t_changed = t.copy()
    t_changed[~mask] = logits((int((~mask).sum()), 4), 50, scale=30.0)
    assert_close(loss.compute_loss(t_changed, student), expected)
    # The same logits without a mask average over every position...
    assert_close(loss.compute_loss(t, s.astype("float32")), values.mean())
    assert not np.isclose(values.mean(), expected)
    # ...unless the mask is given, as it is through a forward pass.
    assert_close(loss.compute_loss(t_changed, s.astype("float32"), mask=mask), expected)
    assert_close(loss.from_passes(*passes(t_changed, student)), expected)
    # sample_weight and the mask combine: sum(v * w * mask) / sum(mask).
    w = np.array([1.0, 3.0, 0.5], "float32")
    assert_close(
        loss.compute_loss(t_changed, student, sample_weight=w),
        np.sum(values * w[:, None] * mask) / mask.sum(),
    )


def test_dkd_and_dist_ignore_padded_positions():
    student, mask = padded_student(seed=1)
    t = logits((3, 5, 4), 51)
    labels = np.random.default_rng(52).integers(0, 4, (3, 5))
    s = to_np(student)
    t_changed = t.copy()
    t_changed[~mask] = logits((int((~mask).sum()), 4), 53, scale=30.0)
    dkd_expected = ref_dkd(t, s, labels, 1.0, 8.0, 4.0)[mask].mean()
    dist_expected = ref_dist(t[mask], s[mask], 1.0, 1.0, 2.0)
    for teacher in (t, t_changed):
        assert_close(DKD().compute_loss(teacher, student, labels=labels), dkd_expected)
        assert_close(DIST(temperature=2.0).compute_loss(teacher, student), dist_expected)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("student_kind", ["zeros", "identical_rows"])
def test_dist_and_dkd_gradients_finite_for_identical_student_rows(student_kind):
    t = logits((6, 4), 54)
    labels = np.array([0, 1, 3, 2, 2, 1])
    if student_kind == "zeros":
        s = np.zeros((6, 4), "float32")
    else:
        s = np.tile(logits((1, 4), 55), (6, 1))
    losses = {
        "dist": lambda x: DIST(temperature=2.0).compute_loss(t, x),
        "dkd": lambda x: DKD().compute_loss(t, x, labels=labels),
        "kd": lambda x: KD().compute_loss(t, x),
    }
    for name, fn in losses.items():
        assert np.isfinite(to_np(fn(keras.ops.convert_to_tensor(s)))), name
        grad = grad_wrt(fn, s)
        assert grad.shape == s.shape
        assert np.all(np.isfinite(grad)), (name, grad)
        assert np.any(grad != 0.0), name


def test_kd_gradient_matches_closed_form():
    """d/ds T^2 KL(p||q) = T (q - p) / B for the batch mean."""
    t, s = logits((6, 4), 56), logits((6, 4), 57)
    temperature = 2.0
    grad = grad_wrt(lambda x: KD(temperature=temperature).compute_loss(t, x), s)
    expected = temperature * (np_softmax(s / temperature) - np_softmax(t / temperature)) / 6
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------

CONSTRUCTIONS = [
    (KD, {"teacher": Output("logits"), "student": Output("logits"), "temperature": 2.5,
          "divergence": "js", "teacher_from_logits": False, "student_from_logits": True,
          "standardize": False, "input_mask": None, "name": "my_kd"}),
    (DKD, {"teacher": Output(1), "student": Output(1), "alpha": 0.5, "beta": 2.0,
           "temperature": 3.0, "standardize": True, "input_mask": None, "name": "my_dkd"}),
    (DIST, {"teacher": "t_logits", "student": "s_logits", "beta": 2.0, "gamma": 0.5,
            "temperature": 1.5, "standardize": False, "input_mask": None,
            "name": "my_dist"}),
]


def serialized_sources(kwargs):
    """`kwargs` as `get_config` gives them: `Output` sources serialized."""
    return {
        key: keras.saving.serialize_keras_object(value) if isinstance(value, Output) else value
        for key, value in kwargs.items()
    }


@pytest.mark.parametrize("cls,kwargs", CONSTRUCTIONS, ids=lambda c: getattr(c, "__name__", ""))
def test_get_config_is_the_constructor_arguments(cls, kwargs):
    assert cls(**kwargs).get_config() == serialized_sources(kwargs)
    default = cls().get_config()
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert set(default) == params
    assert default["teacher"] is None and default["student"] is None


@pytest.mark.parametrize("cls,kwargs", CONSTRUCTIONS, ids=lambda c: getattr(c, "__name__", ""))
def test_serialization_round_trip(cls, kwargs):
    loss = cls(**kwargs)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is cls
    assert restored is not loss
    assert restored.get_config() == loss.get_config()
    assert restored.teacher_sources == loss.teacher_sources
    assert restored.student_sources == loss.student_sources
    t, s = logits((6, 4), 58), logits((6, 4), 59)
    if cls is KD:
        probs = np.abs(t) / np.abs(t).sum(-1, keepdims=True)
        teacher = ForwardPass({"logits": probs, "other": t}, {})
        student = ForwardPass({"logits": s, "other": t}, {})
    elif cls is DKD:
        teacher = ForwardPass([logits((6, 4), 60), t], {})
        student = ForwardPass([logits((6, 4), 61), s], {})
    else:
        teacher = ForwardPass(logits((6, 4), 60), {"t_logits": t, "s_logits": s})
        student = ForwardPass(logits((6, 4), 61), {"s_logits": s, "t_logits": t})
    labels = np.array([0, 2, 1, 1, 3, 0])
    original = to_np(loss.from_passes(teacher, student, labels=labels))
    assert np.isfinite(original) and original > 0
    assert_close(restored.from_passes(teacher, student, labels=labels), original, rtol=0, atol=0)
    if cls is DIST:  # the features of the named layers were compared
        assert_close(original, ref_dist(t, s, 2.0, 0.5, 1.5))


def test_scheduled_temperature_survives_serialization():
    loss = KD(temperature=4.0)
    loss.temperature = 2.0
    t, s = logits((6, 4), 62), logits((6, 4), 63)
    assert_close(loss.compute_loss(t, s), ref_kd(t, s, 2.0).mean())
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert restored.get_config()["temperature"] == 2.0
    assert_close(restored.compute_loss(t, s), ref_kd(t, s, 2.0).mean())


def np_log_softmax64(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def ref_dkd_log_space(teacher, student, labels, alpha, beta, temperature):
    """DKD in float64 log-probabilities: exact where probabilities underflow."""
    def kl(log_p, log_q):
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):  # -inf - -inf where p is 0
            return np.where(p == 0, 0.0, p * (log_p - log_q)).sum(-1)

    def parts(x):
        log_p = np_log_softmax64(np.asarray(x, np.float64) / temperature)
        target = np.take_along_axis(log_p, labels[:, None], -1)[:, 0]
        rest = np.where(np.eye(log_p.shape[-1])[labels] > 0, -np.inf, log_p)
        top = rest.max(-1, keepdims=True)
        log_other = top[:, 0] + np.log(np.exp(rest - top).sum(-1))
        return np.stack([target, log_other], -1), np_log_softmax64(rest)

    (bt, rt), (bs, rs) = parts(teacher), parts(student)
    return temperature**2 * (alpha * kl(bt, bs) + beta * kl(rt, rs))


def test_dkd_at_huge_logits_matches_a_float64_reference():
    rng = np.random.default_rng(4)
    teacher = (rng.normal(size=(16, 5)) * 3e10).astype("float32")
    student = (rng.normal(size=(16, 5)) * 3e10).astype("float32")
    labels = rng.integers(0, 5, size=16)
    expected = ref_dkd_log_space(teacher, student, labels, 1.0, 8.0, 4.0)
    value = to_np(dkd(teacher, student, labels, 1.0, 8.0, 4.0))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # At ordinary logits both references agree.
    small_t, small_s = logits((16, 5), 1), logits((16, 5), 2)
    np.testing.assert_allclose(
        ref_dkd_log_space(small_t, small_s, labels, 1.0, 8.0, 4.0),
        ref_dkd(small_t, small_s, labels), rtol=1e-9,
    )
