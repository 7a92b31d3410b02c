"""Every loss on the batches that break losses: a NaN from the teacher,
weights that are all zero, positions that are all masked, and samples of
weight zero beside far-off ones."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_distill import losses
from tests.reference import grad_wrt
from tests.reference import to_np

B, D = 8, 5
RNG = np.random.default_rng(0)
TEACHER = RNG.normal(size=(B, D)).astype("float32")
STUDENT = RNG.normal(size=(B, D)).astype("float32")
LABELS = RNG.integers(0, D, size=(B,))
MAPS = RNG.normal(size=(2, B, 4, 4, 3)).astype("float32")


def built(loss, width=D):
    spec = [keras.KerasTensor((None, width))]
    loss.build_from_specs(spec, spec)
    return loss


def make(name):
    """The loss `name` of `losses.LOSSES` and a (teacher, student) pair it reads."""
    pair = (TEACHER, STUDENT)
    return {
        "KD": lambda: (losses.KD(), pair),
        "CTKD": lambda: (losses.CTKD(), pair),
        "DKD": lambda: (losses.DKD(), pair),
        "DIST": lambda: (losses.DIST(), pair),
        "FitNet": lambda: (built(losses.FitNet()), pair),
        "HiddenCosine": lambda: (losses.HiddenCosine(), pair),
        "AttentionTransfer": lambda: (losses.AttentionTransfer(), (MAPS[0], MAPS[1])),
        "RKD": lambda: (losses.RKD(), pair),
        "SimilarityPreserving": lambda: (losses.SimilarityPreserving(), pair),
        "PKT": lambda: (losses.PKT(), pair),
        "CorrelationCongruence": lambda: (losses.CorrelationCongruence(), pair),
        "CRD": lambda: (built(losses.CRD(embedding_dim=4, queue_size=16)), pair),
        "LogitsDistillation": lambda: (losses.LogitsDistillation(), pair),
        "FeatureDistillation": lambda: (losses.FeatureDistillation(), pair),
    }[name]()


# TransformerAttention compares groups of attention maps; its own tests
# cover these cases (tests/losses/test_transformer_attention.py).
NAMES = [name for name in losses.LOSSES if name != "TransformerAttention"]


def value(loss, teacher, student, sample_weight=None, labels=LABELS):
    return loss.compute_loss(
        ops.convert_to_tensor(teacher), ops.convert_to_tensor(student),
        labels=ops.convert_to_tensor(labels), sample_weight=sample_weight,
    )


def test_the_table_covers_every_loss_but_one():
    assert sorted(NAMES + ["TransformerAttention"]) == sorted(losses.LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_from_the_teacher_gives_a_nan_loss(name):
    loss, (teacher, student) = make(name)
    teacher = teacher.copy()
    teacher.reshape(-1)[3] = np.nan
    assert np.isnan(float(to_np(value(loss, teacher, student))))


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_weights_give_zero_and_a_zero_gradient(name):
    loss, (teacher, student) = make(name)
    weights = ops.zeros((B,))
    assert float(to_np(value(loss, teacher, student, weights))) == 0.0
    gradient = grad_wrt(lambda s: value(loss, teacher, s, weights), student)
    np.testing.assert_array_equal(gradient, np.zeros_like(student))


@pytest.mark.parametrize("name", ["KD", "DKD", "DIST", "LogitsDistillation"])
def test_all_masked_positions_give_zero_and_a_zero_gradient(name):
    loss, _ = make(name)
    teacher = RNG.normal(size=(2, 3, D)).astype("float32")
    student = RNG.normal(size=(2, 3, D)).astype("float32")
    labels = RNG.integers(0, D, size=(2, 3))
    mask = ops.zeros((2, 3), "bool")

    def masked(s):
        return loss.compute_loss(
            ops.convert_to_tensor(teacher), s, labels=ops.convert_to_tensor(labels), mask=mask
        )

    assert float(to_np(masked(ops.convert_to_tensor(student)))) == 0.0
    np.testing.assert_array_equal(grad_wrt(masked, student), np.zeros_like(student))


# How each relation loss counts: over all B^k pairs or triplets, weights or
# not (the authors' conventions), so a sample of weight 0 changes the count
# and nothing else.
RELATIONS = {
    "RKD (distance)": (lambda: losses.RKD(angle_weight=0.0), 2),
    "RKD (angle)": (lambda: losses.RKD(distance_weight=0.0), 3),
    "SimilarityPreserving": (losses.SimilarityPreserving, 2),
    "PKT": (losses.PKT, 2),
    "CorrelationCongruence": (losses.CorrelationCongruence, 2),
}


@pytest.mark.parametrize("name", sorted(RELATIONS))
def test_a_sample_of_weight_zero_takes_no_part_in_a_relation(name):
    make_loss, power = RELATIONS[name]
    far = 1e3 * np.ones((1, D), "float32")
    teacher = np.concatenate([TEACHER, far])
    student = np.concatenate([STUDENT, -far])
    weights = np.concatenate([RNG.uniform(0.5, 2.0, size=B), [0.0]]).astype("float32")
    with_it = float(to_np(value(make_loss(), teacher, student, weights, np.zeros(B + 1))))
    without = float(to_np(value(make_loss(), TEACHER, STUDENT, weights[:B])))
    np.testing.assert_allclose(with_it * ((B + 1) / B) ** power, without, rtol=1e-5)


def test_dist_without_a_sample_of_nonzero_weight_in_a_class_stays_finite():
    # Every sample of one class weighted 0 (class_weight={c: 0}): the
    # intra-class correlations are over the others.
    weights = ops.convert_to_tensor(np.where(LABELS == LABELS[0], 0.0, 1.0).astype("float32"))
    loss = losses.DIST()
    assert np.isfinite(float(to_np(value(loss, TEACHER, STUDENT, weights))))
    gradient = grad_wrt(lambda s: value(loss, TEACHER, s, weights), STUDENT)
    assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("name", NAMES)
def test_exact_zeros_in_the_features_give_a_finite_gradient(name):
    # Post-ReLU features: about half the entries exactly 0, and a row (and
    # so Gram entries and norms) that is all 0.
    loss, (teacher, student) = make(name)
    teacher, student = np.maximum(teacher, 0.0), np.maximum(student, 0.0)
    teacher.reshape(len(teacher), -1)[0] = 0.0
    student.reshape(len(student), -1)[1] = 0.0
    assert np.isfinite(float(to_np(value(loss, teacher, student))))
    gradient = grad_wrt(lambda s: value(loss, teacher, s), student)
    assert np.all(np.isfinite(gradient)), name
