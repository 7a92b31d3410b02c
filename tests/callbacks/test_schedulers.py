"""Schedulers change what the compiled training step reads, on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_distill
from keras_distill.callbacks import LossWeightScheduler
from keras_distill.callbacks import TemperatureScheduler
from keras_distill.losses import DKD
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from tests.conftest import classification_data
from tests.conftest import mlp

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
JIT_MODES = [False] if keras.backend.backend() == "torch" else [False, True]


class TemperatureProbe(keras_distill.losses.PerSampleLoss):
    """A loss whose value is its temperature: the step's view of the variable."""

    def __init__(self, teacher=None, student=None, *, temperature=1.0, **kwargs):
        super().__init__(teacher, student, **kwargs)
        self.temperature = temperature  # a schedulable variable from here on

    def per_sample(self, context):
        return ops.ones_like(context.student[:, 0]) * self.temperature_variable


def fit(losses, callbacks, epochs=3, jit_compile=False, **kwargs):
    x, y = classification_data(64)
    distiller = keras_distill.Distiller(mlp(16), mlp(4), losses, **kwargs)
    distiller.compile(loss=SCCE, jit_compile=jit_compile)
    history = distiller.fit(
        x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks
    )
    return distiller, history.history


@pytest.mark.parametrize("jit_compile", JIT_MODES)
def test_temperature_seen_inside_the_step_follows_the_schedule(jit_compile):
    schedule = [1.0, 2.5, 4.0]
    _, history = fit(
        TemperatureProbe(name="probe"),
        [TemperatureScheduler(lambda epoch: schedule[epoch])],
        jit_compile=jit_compile,
    )
    np.testing.assert_allclose(history["probe"], schedule, rtol=1e-6)
    np.testing.assert_allclose(history["temperature"], schedule)


def test_temperature_per_batch_follows_the_optimizer_step():
    # 4 steps per epoch; the step's value is 1 + step, so an epoch's mean is
    # the mean of its four steps' temperatures.
    _, history = fit(
        TemperatureProbe(name="probe"),
        [TemperatureScheduler(lambda step: 1.0 + step, update_freq="batch")],
        epochs=2,
    )
    np.testing.assert_allclose(history["probe"], [2.5, 6.5], rtol=1e-6)


def test_temperature_scheduler_changes_a_real_kd_loss():
    distiller, _ = fit(
        [KD(temperature=1.0), TemperatureProbe(name="probe")],
        [TemperatureScheduler(lambda epoch: 3.0, losses=["kd"])],
        epochs=1,
    )
    assert distiller.distillation_losses[0].temperature == 3.0
    assert distiller.distillation_losses[1].temperature == 1.0


@pytest.mark.parametrize("jit_compile", JIT_MODES)
def test_loss_weight_seen_inside_the_step_follows_the_schedule(jit_compile):
    # DKD-style warm-up of one distillation loss's weight.
    warm_up = [0.0, 0.5, 1.0]
    _, history = fit(
        TemperatureProbe(temperature=1.0, name="probe"),
        [LossWeightScheduler(lambda epoch: warm_up[epoch], loss="probe")],
        jit_compile=jit_compile,
    )
    np.testing.assert_allclose(history["distillation_loss"], warm_up, rtol=1e-6)
    np.testing.assert_allclose(history["probe_weight"], warm_up)


def test_student_loss_weight_schedule_changes_the_total():
    _, history = fit(
        TemperatureProbe(temperature=1.0, name="probe"),
        [LossWeightScheduler(lambda epoch: [1.0, 0.0][epoch], loss="student")],
        epochs=2,
        distillation_loss_weights=[1.0],
    )
    # total = w_s * student_loss + 1.0 * probe (= 1.0)
    np.testing.assert_allclose(
        history["loss"][0], history["student_loss"][0] + 1.0, rtol=1e-5
    )
    np.testing.assert_allclose(history["loss"][1], 1.0, rtol=1e-6)


def test_bad_schedules_and_targets_raise_clear_errors():
    with pytest.raises(ValueError, match="> 0"):
        fit(KD(), [TemperatureScheduler(lambda epoch: 0.0)], epochs=1)
    with pytest.raises(ValueError, match="available"):
        fit(KD(), [TemperatureScheduler(lambda e: 2.0, losses=["dkd"])], epochs=1)
    with pytest.raises(ValueError, match=r"available: \['student', 'kd'\]"):
        fit(KD(), [LossWeightScheduler(lambda e: 1.0, loss="kdd")], epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        fit(KD(), [LossWeightScheduler(lambda e: -1.0, loss="kd")], epochs=1)
    with pytest.raises(ValueError, match=r"none of the Distiller's losses \(\['fit_net'\]\)"):
        fit(FitNet("hidden", "hidden"), [TemperatureScheduler(lambda e: 2.0)], epochs=1)
    with pytest.raises(TypeError, match="callable"):
        TemperatureScheduler(3.0)
    with pytest.raises(ValueError, match="update_freq"):
        TemperatureScheduler(lambda e: 1.0, update_freq="step")
    with pytest.raises(TypeError, match="keras_distill.Distiller"):
        model = mlp(4)
        model.compile(loss=SCCE)
        x, y = classification_data(16)
        model.fit(x, y, verbose=0, callbacks=[TemperatureScheduler(lambda e: 1.0)])


def test_the_variables_come_from_schedulable_variables():
    kd, dkd, hints = KD(temperature=3.0), DKD(temperature=2.0), FitNet("hidden", "hidden")
    distiller = keras_distill.Distiller(
        mlp(16), mlp(4), [kd, dkd, hints], distillation_loss_weights=[0.1, 0.2, 0.3]
    )
    found = distiller.schedulable_variables()
    assert set(found) == {"loss_weight", "temperature"}
    assert list(found["loss_weight"]) == ["student", "kd", "dkd", "fit_net"]
    # The variables the step reads: assigning one changes the attribute.
    found["loss_weight"]["student"].assign(0.25)
    assert distiller.student_loss_weight == 0.25
    for i, name in enumerate(["kd", "dkd", "fit_net"]):
        found["loss_weight"][name].assign(i + 2.0)
    assert distiller.distillation_loss_weights == [2.0, 3.0, 4.0]
    assert sorted(found["temperature"]) == ["dkd", "kd"]  # FitNet has none
    assert found["temperature"]["kd"] is kd.schedulable_variables()["temperature"]
    assert float(found["temperature"]["kd"].numpy()) == 3.0
    assert float(found["temperature"]["dkd"].numpy()) == 2.0
    assert hints.schedulable_variables() == {}


class Scaled(keras.Model):
    """Not a Distiller: a model whose output scale is a schedulable weight."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.scale = self.add_weight(shape=(), initializer="ones", trainable=False)

    def call(self, x):
        return self.dense(x) * self.scale

    def schedulable_variables(self):
        return {"loss_weight": {"student": self.scale}, "temperature": {}}


def test_any_model_with_schedulable_variables_is_scheduled():
    x, y = classification_data(32)
    model = Scaled()
    model.compile(loss=SCCE)
    schedule = LossWeightScheduler(lambda epoch: [2.0, 3.0][epoch], loss="student")
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[schedule]).history
    assert history["student_weight"] == [2.0, 3.0]
    assert float(model.scale.numpy()) == 3.0
    with pytest.raises(ValueError, match="none of the Distiller's losses"):
        model.fit(x, y, verbose=0, callbacks=[TemperatureScheduler(lambda e: 1.0)])
