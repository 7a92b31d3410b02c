"""Logit standardization (Sun et al. 2024) and curriculum temperature (CTKD).

Values against the float64 NumPy references of `tests.reference`, written
from the papers and the authors' code; gradients against the backend's
autodiff and central differences of those references.
"""

import math

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import CTKD
from keras_distill.losses import DIST
from keras_distill.losses import DKD
from keras_distill.losses import KD
from keras_distill.losses import curriculum_reversal
from keras_distill.losses import dist
from keras_distill.losses import dkd
from keras_distill.losses import kd
from keras_distill.losses import standardize_logits
from keras_distill.reversal import gradient_reversal
from tests.reference import assert_close
from tests.reference import grad_wrt
from tests.reference import logits
from tests.reference import np_ctkd_decay
from tests.reference import np_standardize
from tests.reference import ref_dist
from tests.reference import ref_dkd
from tests.reference import ref_kd
from tests.reference import to_np

LABELS = np.array([0, 1, 2, 3, 3, 2])


# -- Logit standardization ---------------------------------------------------


def test_standardize_logits_matches_reference():
    z = logits((6, 5), 1)
    assert_close(standardize_logits(z), np_standardize(z))
    standardized = to_np(standardize_logits(z))
    np.testing.assert_allclose(standardized.mean(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(standardized.std(-1, ddof=1), 1.0, rtol=1e-5)


def test_constant_logits_standardize_to_zeros_with_a_finite_gradient():
    z = np.full((2, 4), 3.0, "float32")
    assert_close(standardize_logits(z), np.zeros((2, 4)))
    grad = grad_wrt(lambda x: keras.ops.sum(kd(logits((2, 4), 2), x, 2.0,
                                                standardize=True)), z)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", ["forward", "reverse", "js"])
def test_standardized_kd_matches_reference(temperature, divergence):
    t, s = logits((6, 4), 3), logits((6, 4), 4)
    value = kd(t, s, temperature, divergence, standardize=True)
    assert_close(value, ref_kd(np_standardize(t), np_standardize(s), temperature, divergence))


def test_standardized_dkd_and_dist_match_reference():
    t, s = logits((6, 4), 5), logits((6, 4), 6)
    assert_close(
        dkd(t, s, LABELS, 1.0, 2.0, 2.0, standardize=True),
        ref_dkd(np_standardize(t), np_standardize(s), LABELS, 1.0, 2.0, 2.0),
    )
    assert_close(
        dist(t, s, 1.0, 2.0, 2.0, standardize=True),
        ref_dist(np_standardize(t), np_standardize(s), 1.0, 2.0, 2.0),
    )


def test_standardized_kd_ignores_each_samples_logit_range():
    """The paper's point: a student need not match the teacher's logit
    range, only its relations; any per-sample shift and positive scale of
    either model's logits leaves the loss as it is."""
    t, s = logits((6, 4), 7), logits((6, 4), 8)
    scale = np.array([[0.5], [1.0], [2.0], [3.0], [0.25], [4.0]], "float32")
    moved = kd(t * scale + 1.5, s / scale - 2.0, 2.0, standardize=True)
    assert_close(moved, to_np(kd(t, s, 2.0, standardize=True)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(to_np(kd(t * scale, s, 2.0)), to_np(kd(t, s, 2.0)))


def test_standardized_kd_gradient_matches_central_differences():
    t, s = logits((3, 4), 9), logits((3, 4), 10).astype("float64")
    grad = grad_wrt(
        lambda x: keras.ops.mean(kd(t, x, 2.0, standardize=True)), s.astype("float32")
    )
    step = 1e-5
    expected = np.zeros_like(s)
    for index in np.ndindex(s.shape):
        up, down = s.copy(), s.copy()
        up[index] += step
        down[index] -= step
        expected[index] = (
            ref_kd(np_standardize(t), np_standardize(up), 2.0).mean()
            - ref_kd(np_standardize(t), np_standardize(down), 2.0).mean()
        ) / (2 * step)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("cls", [KD, DKD, DIST])
def test_the_classes_take_standardize(cls):
    t, s = logits((6, 4), 11), logits((6, 4), 12)
    plain, standardized = cls(temperature=2.0), cls(temperature=2.0, standardize=True)
    assert standardized.get_config()["standardize"] is True
    restored = cls.from_config(standardized.get_config())
    value = to_np(standardized.compute_loss(t, s, labels=LABELS))
    assert_close(restored.compute_loss(t, s, labels=LABELS), value, rtol=0, atol=0)
    assert_close(
        plain.compute_loss(np_standardize(t).astype("float32"),
                           np_standardize(s).astype("float32"), labels=LABELS),
        value, rtol=1e-5,
    )


def test_standardize_needs_logits():
    with pytest.raises(ValueError, match="standardize=True.*probabilities"):
        KD(standardize=True, teacher_from_logits=False)


def test_standardize_needs_two_classes():
    loss = KD(standardize=True)
    with pytest.raises(ValueError, match="1 class"):
        loss.validate_outputs(keras.ops.ones((2, 1)), keras.ops.ones((2, 1)))


# -- Gradient reversal and CTKD ----------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_gradient_reversal_is_the_identity_with_a_reversed_gradient(scale):
    x = logits((5,), 13)
    assert_close(gradient_reversal(x, scale), x, rtol=0, atol=0)
    weights = logits((5,), 14)
    grad = grad_wrt(lambda v: keras.ops.sum(keras.ops.multiply(weights, gradient_reversal(v, scale))), x)
    np.testing.assert_allclose(grad, -scale * weights, rtol=1e-6)


@pytest.mark.parametrize("epoch", range(13))
def test_curriculum_follows_the_authors_cosine_decay(epoch):
    # The authors' epochs count from 1; their decay value multiplies the
    # temperature's gradient, so the reversal's strength is its negative.
    assert math.isclose(curriculum_reversal(epoch, 10, 1.0), -np_ctkd_decay(epoch + 1),
                        abs_tol=1e-12)


def test_ctkd_starts_at_the_authors_temperature():
    loss = CTKD()
    assert math.isclose(loss.temperature, 1.0 + 20.0 / (1.0 + math.exp(-1.0)))
    assert loss.schedulable_variables() == {}
    assert [w.name for w in loss.trainable_weights] == ["temperature_logit"]


def test_ctkd_is_kd_at_its_learnt_temperature():
    t, s = logits((6, 4), 15), logits((6, 4), 16)
    loss = CTKD(temperature=3.0, standardize=True)
    assert math.isclose(loss.temperature, 3.0, rel_tol=1e-6)
    assert_close(loss.compute_loss(t, s),
                 ref_kd(np_standardize(t), np_standardize(s), 3.0).mean(), rtol=1e-5)


def fit_ctkd(loss, epochs, learning_rate=0.01):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = np.random.default_rng(1).integers(0, 4, 64)

    def linear():
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])

    distiller = keras_distill.Distiller(linear(), linear(), loss)
    distiller.compile(keras.optimizers.SGD(learning_rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher = distiller.teacher.predict(x, verbose=0)
    student = distiller.student.predict(x, verbose=0)
    distiller.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return distiller, teacher, student


@pytest.mark.requires_trainable_backend
def test_ctkd_temperature_ascends_the_kd_loss():
    """One full-batch SGD step moves theta by lr * reversal * dKD/dtheta
    (times the loss weight): up the KD loss, as the paper's min-max wants."""
    loss = CTKD(temperature=4.0, curriculum_epochs=1, max_reversal=0.5)
    theta = math.log(3.0 / 17.0)
    _, teacher, student = fit_ctkd(loss, epochs=1, learning_rate=0.1)

    def kd_at(theta):
        temperature = 1.0 + 20.0 / (1.0 + math.exp(-theta))
        return ref_kd(teacher, student, temperature).mean()

    step = 1e-5
    slope = (kd_at(theta + step) - kd_at(theta - step)) / (2 * step)
    moved = math.log((loss.temperature - 1.0) / (21.0 - loss.temperature)) - theta
    # 0.5: the Distiller's default weight of the distillation loss.
    assert math.isclose(moved, 0.1 * 0.5 * 0.5 * slope, rel_tol=1e-3)


@pytest.mark.requires_trainable_backend
def test_ctkd_without_reversal_keeps_its_temperature():
    loss = CTKD(temperature=4.0, max_reversal=0.0)
    fit_ctkd(loss, epochs=2)
    assert math.isclose(loss.temperature, 4.0, rel_tol=1e-6)


def test_fit_sets_the_curriculum_before_each_epoch():
    loss = CTKD(curriculum_epochs=10)
    fit_ctkd(loss, epochs=3)
    assert math.isclose(loss.reversal, curriculum_reversal(2, 10), rel_tol=1e-6)


def test_ctkd_serializes_and_its_distiller_keeps_the_learnt_temperature(tmp_path):
    loss = CTKD(temperature=5.0, temperature_range=(2.0, 12.0), curriculum_epochs=4,
                max_reversal=0.5, divergence="js", name="curriculum")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert restored.get_config() == loss.get_config()
    distiller, _, _ = fit_ctkd(CTKD(temperature=4.0, curriculum_epochs=1), epochs=2)
    learnt = distiller.distillation_losses[0].temperature
    assert learnt != 4.0
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert math.isclose(loaded.distillation_losses[0].temperature, learnt, rel_tol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature_range": (3.0, 2.0)}, "0 < low < high"),
    ({"curriculum_epochs": 0}, "curriculum_epochs"),
    ({"max_reversal": -1.0}, "max_reversal"),
    ({"temperature": 30.0}, "inside temperature_range"),
])
def test_ctkd_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTKD(**kwargs)


def test_temperature_scheduler_leaves_a_learnt_temperature_alone():
    distiller, _, _ = fit_ctkd(CTKD(), epochs=1)
    scheduler = keras_distill.callbacks.TemperatureScheduler(lambda epoch: 2.0)
    with pytest.raises(ValueError, match="has a temperature"):
        scheduler.scheduled_variables(distiller)
