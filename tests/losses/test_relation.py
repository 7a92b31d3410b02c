"""Tests of the relation-based losses: RKD, SP, PKT and CC.

Values are checked against the float64 NumPy references in
tests/reference.py, written as explicit loops over pairs and triplets from
the papers' definitions, and against cases worked out by hand; plus the
invariances each method has, sample weights, and finite gradients where
embeddings coincide. RKD and PKT are also checked against NumPy
transcriptions of their authors' code, whose means over all pairs (and
triplets) the published loss weights were tuned on.
"""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import PKT
from keras_distill.losses import RKD
from keras_distill.losses import CorrelationCongruence
from keras_distill.losses import SimilarityPreserving
from keras_distill.losses import correlation_congruence
from keras_distill.losses import pkt
from keras_distill.losses import rkd_angle
from keras_distill.losses import rkd_distance
from keras_distill.losses import similarity_preserving
from keras_distill.taps import ForwardPass
from tests.reference import assert_close
from tests.reference import fit_and_evaluate
from tests.reference import grad_wrt
from tests.reference import logits
from tests.reference import ref_correlation_congruence
from tests.reference import ref_pkt
from tests.reference import ref_pkt_authors_code
from tests.reference import ref_rkd_angle
from tests.reference import ref_rkd_authors_code
from tests.reference import ref_rkd_distance
from tests.reference import ref_similarity_preserving
from tests.reference import to_np

FUNCTIONS = {
    "rkd_distance": (rkd_distance, ref_rkd_distance),
    "rkd_angle": (rkd_angle, ref_rkd_angle),
    "similarity_preserving": (similarity_preserving, ref_similarity_preserving),
    "pkt": (pkt, ref_pkt),
    "cc_taylor": (correlation_congruence, ref_correlation_congruence),
    "cc_exact": (
        lambda t, s, w=None: correlation_congruence(t, s, w, order=None),
        lambda t, s, w=None: ref_correlation_congruence(t, s, w, order=None),
    ),
}


def embeddings(batch=6, width=5, seed=0):
    return logits((batch, width), seed, scale=1.0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_match_the_references(name):
    fn, ref = FUNCTIONS[name]
    t, s = embeddings(6, 7, 1), embeddings(6, 3, 2)  # widths may differ
    assert_close(fn(t, s), ref(t, s), rtol=1e-4, atol=1e-6)
    weights = np.array([1.0, 0.5, 2.0, 0.0, 1.0, 3.0], "float32")
    assert_close(fn(t, s, weights), ref(t, s, weights), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_sample_of_weight_zero_takes_no_part(name):
    fn, _ = FUNCTIONS[name]
    t, s = embeddings(5, 4, 3), embeddings(5, 4, 4)
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0], "float32")
    # The sums of weighted terms are the same; each loss divides them by
    # the batch's B^2 pairs (RKD's angle term: its B^3 triplets).
    counts = {"rkd_angle": (4**3, 5**3)}.get(name, (4**2, 5**2))
    expected = float(fn(t[:4], s[:4])) * counts[0] / counts[1]
    assert_close(fn(t, s, weights), expected, rtol=1e-4, atol=1e-7)


def test_hand_worked_values():
    # RKD distance. Teacher points 0, 1, 2: distances 1, 1, 2, mean 4/3.
    # Student points 0, 1, 3: distances 1, 2, 3, mean 2. Normalised
    # differences -0.25, 0.25 and 0 give Huber 1/32, 1/32, 0 per unordered
    # pair; twice that over all 3^2 = 9 ordered pairs is 1/72.
    t = np.array([[0.0], [1.0], [2.0]], "float32")
    s = np.array([[0.0], [1.0], [3.0]], "float32")
    assert_close(rkd_distance(t, s), 1 / 72, rtol=1e-5)
    # RKD angle. Teacher: a right angle at (0, 0), 45 degrees at the other
    # two corners. Student: three points on a line, cosines 1, -1, 1.
    # Huber(1) + Huber(-1 - 1/sqrt 2) + Huber(1 - 1/sqrt 2) = 1.75, each
    # twice, over all 3^3 = 27 triplets: 3.5 / 27.
    t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    s = np.array([[0.0], [1.0], [2.0]], "float32")
    assert_close(rkd_angle(t, s), 3.5 / 27, rtol=1e-5)
    # SP. Teacher Gram I; student Gram all ones, rows 1/sqrt 2 after
    # normalising: (2 (1 - 1/sqrt 2)^2 + 2 / 2) / 4 = (2 - sqrt 2) / 2.
    t = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    s = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    assert_close(similarity_preserving(t, s), (2 - np.sqrt(2)) / 2, rtol=1e-5)
    # PKT. Teacher orthogonal: P(.|i) = (2/3, 1/3); student identical rows:
    # (1/2, 1/2). KL = 2/3 ln(4/3) + 1/3 ln(2/3) per sample (row of P),
    # twice, over the 2^2 = 4 entries of P: half the KL.
    expected = (2 / 3 * np.log(4 / 3) + 1 / 3 * np.log(2 / 3)) / 2
    assert_close(pkt(t, s), expected, rtol=1e-5)


def test_rkd_weights_mean_what_the_authors_code_meant():
    """RKD's defaults (25 and 50) are the paper's weights, tuned on the
    authors' code, which averages `smooth_l1_loss` over the full `(B, B)`
    and `(B, B, B)` matrices. Averaged over distinct pairs and triplets
    instead, the terms would be B / (B - 1) and B^2 / ((B - 1)(B - 2))
    times larger: 14% and 52% at B = 8."""
    t, s = embeddings(8, 6, 11), embeddings(8, 3, 12)
    distance, angle = ref_rkd_authors_code(t, s)
    assert_close(rkd_distance(t, s), distance, rtol=1e-4, atol=1e-7)
    assert_close(rkd_angle(t, s), angle, rtol=1e-4, atol=1e-7)
    loss = RKD()
    assert (loss.distance_weight, loss.angle_weight) == (25.0, 50.0)
    assert_close(loss.compute_loss(t, s), 25.0 * distance + 50.0 * angle, rtol=1e-4)
    assert_close(
        RKD(distance_weight=1.0, angle_weight=0.0).compute_loss(t, s), distance, rtol=1e-4
    )
    assert_close(
        RKD(distance_weight=0.0, angle_weight=2.0).compute_loss(t, s), 2 * angle, rtol=1e-4
    )


def test_pkt_is_the_mean_over_the_batch_matrix_as_the_authors_code():
    """PKT is the mean over all B^2 entries of P_t log(P_t / P_s), as the
    authors' code computes it: the mean KL of the rows, divided by B."""
    t, s = embeddings(8, 6, 13), embeddings(8, 3, 14)
    expected = ref_pkt_authors_code(t, s)
    assert_close(pkt(t, s), expected, rtol=1e-4)
    assert_close(PKT().compute_loss(t, s), expected, rtol=1e-4)


def test_invariances():
    t, s = embeddings(6, 5, 5), embeddings(6, 4, 6)
    # RKD distance: unchanged when the teacher's embeddings are scaled.
    assert_close(rkd_distance(3.7 * t, s), float(rkd_distance(t, s)), rtol=1e-5)
    # RKD angle: unchanged by translating and scaling either model.
    assert_close(rkd_angle(2.0 * t + 5.0, 0.5 * s - 1.0), float(rkd_angle(t, s)),
                 rtol=1e-4)
    # SP: unchanged when feature channels are permuted.
    permuted = s[:, np.random.default_rng(0).permutation(4)]
    assert_close(similarity_preserving(t, permuted),
                 float(similarity_preserving(t, s)), rtol=1e-5)
    # PKT and CC read directions only: unchanged by scaling.
    assert_close(pkt(4.0 * t, 0.3 * s), float(pkt(t, s)), rtol=1e-5)
    assert_close(correlation_congruence(4.0 * t, s),
                 float(correlation_congruence(t, s)), rtol=1e-5)
    # Equal relations give zero, whatever the widths.
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]
    same = (t @ rotation).astype("float32")
    for fn in (rkd_distance, rkd_angle, similarity_preserving, pkt):
        assert_close(fn(t, same), 0.0, atol=1e-5)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradients_stay_finite_where_embeddings_coincide(name):
    fn, _ = FUNCTIONS[name]
    t = embeddings(4, 3, 7)
    s = embeddings(4, 3, 8)
    s[1] = s[0]  # two student embeddings coincide
    gradient = grad_wrt(lambda x: fn(t, x), s)
    assert np.all(np.isfinite(gradient)), gradient


def test_rkd_at_batch_256_runs_with_its_gradient():
    """The angle term's memory bound, B^2 (D + B) floats per tensor, is
    about 100 MiB at this size: it must run, with finite gradients."""
    t, s = embeddings(256, 128, 9), embeddings(256, 64, 10)
    loss = RKD()
    gradient = grad_wrt(lambda x: loss.compute_loss(t, x), s)
    assert gradient.shape == s.shape and np.all(np.isfinite(gradient))


@pytest.mark.parametrize(
    "make_loss",
    [RKD, SimilarityPreserving, PKT, CorrelationCongruence],
    ids=["rkd", "sp", "pkt", "cc"],
)
def test_a_nan_teacher_gives_a_nan_loss(make_loss):
    t, s = embeddings(6, 5, 15), embeddings(6, 3, 16)
    loss = make_loss()
    assert np.isfinite(to_np(loss.compute_loss(t, s)))
    t[2, 1] = np.nan
    assert np.isnan(to_np(loss.compute_loss(t, s)))


@pytest.mark.parametrize(
    "make_loss,compute",
    [(RKD, lambda t, s, w: 25.0 * ref_rkd_distance(t, s, w) + 50.0 * ref_rkd_angle(t, s, w)),
     (SimilarityPreserving, ref_similarity_preserving), (PKT, ref_pkt),
     (CorrelationCongruence, ref_correlation_congruence)],
    ids=["rkd", "sp", "pkt", "cc"],
)
def test_classes_compare_the_tensors_their_sources_read(make_loss, compute):
    t, s = embeddings(6, 7, 17), embeddings(6, 3, 18)
    w = np.array([1.0, 0.5, 2.0, 0.0, 1.0, 3.0], "float32")
    loss = make_loss()
    assert loss.tap_paths("teacher") == loss.tap_paths("student") == ()
    assert_close(loss.compute_loss(t, s, sample_weight=w), compute(t, s, w), rtol=1e-4)
    # Teacher and student may read different things: a layer and an output.
    mixed = make_loss("embedding", None)
    assert mixed.tap_paths("teacher") == ("embedding",) and mixed.tap_paths("student") == ()
    teacher = ForwardPass(embeddings(6, 3, 19), {"embedding": t})
    student = ForwardPass(s, {"embedding": embeddings(6, 3, 20)})
    assert_close(mixed.from_passes(teacher, student, sample_weight=w), compute(t, s, w),
                 rtol=1e-4)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="keyword arguments"):
        RKD(25.0, 50.0)  # the weights are keyword arguments
    with pytest.raises(TypeError):
        CorrelationCongruence(None, None, 0.4)
    with pytest.raises(ValueError, match=">= 0"):
        RKD(angle_weight=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        CorrelationCongruence(gamma=0.0)
    with pytest.raises(ValueError, match="order"):
        CorrelationCongruence(order=1.5)


def embedding_model(width, name):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    x = keras.layers.Dense(width, name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x), name=name)


@pytest.mark.parametrize(
    "loss",
    [RKD("embedding", "embedding"),
     SimilarityPreserving("embedding", "embedding"),
     PKT("embedding", "embedding"),
     CorrelationCongruence("embedding", "embedding"),
     RKD(angle_weight=0.0)],
    ids=lambda loss: loss.name + ("_outputs" if not loss.tap_paths("teacher") else ""),
)
def test_distiller_lowers_the_loss_between_embeddings_of_other_widths(loss):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, 64)
    distiller = keras_distill.Distiller(
        embedding_model(12, "teacher"), embedding_model(4, "student"), loss,
        student_loss_weight=0.1, distillation_loss_weights=[1.0],
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fit_and_evaluate(distiller, x, y, loss.name, epochs=5)

    restored = type(loss).from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()




def test_rkd_angle_is_accurate_far_from_the_origin_and_near_duplicates():
    """The angles come from a Gram matrix: checked against the float64
    reference on features far from the origin (as ReLU activations are),
    with two rows 0.05 apart; rows equal, or closer than the resolution of
    a float32 Gram matrix (here 1e-4 apart), have no direction between
    them."""
    rng = np.random.default_rng(3)
    t = (50.0 + rng.normal(size=(12, 40))).astype("float32")
    s = (50.0 + rng.normal(size=(12, 20))).astype("float32")
    s[1] = s[0] + 0.05 * rng.normal(size=20).astype("float32")
    assert_close(rkd_angle(t, s), ref_rkd_angle(t, s), rtol=1e-4)

    # Rows 0 and 1 (nearly) equal in both models. A triplet holding both
    # then has the same cosine in both (0: no direction between them, or
    # 1: the same direction twice), so its term is 0. A triplet holding
    # row 1 but not row 0 equals its twin with row 0, so the sum of the
    # terms is twice that over the triplets without row 1, less that over
    # those without rows 0 and 1.
    # (The references divide the sums by B^3.)
    without_1 = ref_rkd_angle(t[[0, *range(2, 12)]], s[[0, *range(2, 12)]])
    without_both = ref_rkd_angle(t[2:], s[2:])
    total = 2 * without_1 * 11**3 - without_both * 10**3
    for gap in (0.0, 1e-4):
        t[1] = t[0] + gap * rng.normal(size=40).astype("float32")
        s[1] = s[0] + gap * rng.normal(size=20).astype("float32")
        assert_close(rkd_angle(t, s), total / 12**3, rtol=1e-4)
