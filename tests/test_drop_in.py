"""What a script written for `keras.distillation` relies on, beyond the
Keras tests that tests/test_keras_suite.py runs: unbuilt models, repeated
loss classes, Keras-style loss subclasses, numbers where Keras has numbers,
and the loss trackers."""

import json

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill import FeatureDistillation
from keras_distill import LogitsDistillation
from keras_distill.callbacks import LossWeightScheduler
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from tests.conftest import SubclassedClassifier
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import layer_output
from tests.reference import ref_kd
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def unbuilt_mlp(width, name):
    """A Sequential without an `Input`: not built until it first runs."""
    return keras.Sequential(
        [keras.layers.Dense(width, activation="relu", name="hidden"),
         keras.layers.Dense(3, name="logits")],
        name=name,
    )


def test_fit_builds_unbuilt_models_and_the_losses_they_size():
    x, y = classification_data(64)
    teacher, student = unbuilt_mlp(16, "teacher"), unbuilt_mlp(4, "student")
    distiller = keras_distill.Distiller(
        teacher, student, [KD(), FitNet("hidden", "hidden")],
        distillation_loss_weights=[1.0, 1.0],
    )
    assert not teacher.built and not student.built
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert teacher.built and student.built
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    (connector,) = distiller.distillation_losses[1].connectors
    before = [w.copy() for w in connector.get_weights()]
    # The connector, built from the student's hidden width, is trained;
    # the teacher, built by the same first pass, is not.
    assert connector.get_weights()[0].shape == (4, 16)
    trained = {id(v) for v in distiller.trainable_variables}
    assert all(id(v) in trained for v in connector.trainable_variables)
    assert not any(id(v) in trained for v in teacher.variables)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.allclose(connector.get_weights()[0], before[0])
    for old, new in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("first_use", ["call", "predict", "evaluate", "train_on_batch"])
def test_every_entry_point_builds_unbuilt_models(first_use):
    x, y = classification_data(32)
    teacher, student = SubclassedClassifier(16), SubclassedClassifier(4)
    distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
    distiller.compile(loss=SCCE)
    {
        "call": lambda: distiller(x),
        "predict": lambda: distiller.predict(x, verbose=0),
        "evaluate": lambda: distiller.evaluate(x, y, verbose=0),
        "train_on_batch": lambda: distiller.train_on_batch(x, y),
    }[first_use]()
    assert teacher.built and student.built
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    expected = ref_kd(to_np(teacher(x)), to_np(student(x)), 2.0).mean()
    np.testing.assert_allclose(logs["kd"], expected, rtol=1e-4)


def test_repeated_loss_classes_are_logged_under_distinct_names():
    x, y = classification_data(32)
    teacher, student = mlp(16), mlp(16)
    distiller = keras_distill.Distiller(
        teacher, student,
        [FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden"),
         FeatureDistillation(teacher_layer_name="logits", student_layer_name="logits"),
         LogitsDistillation(3.0), LogitsDistillation(2.0)],
    )
    assert distiller.distillation_loss_names == [
        "feature_distillation", "feature_distillation_1",
        "logits_distillation", "logits_distillation_1",
    ]
    distiller.compile(loss=SCCE)
    schedule = LossWeightScheduler(lambda epoch: 0.25, loss="feature_distillation_1")
    distiller.fit(x, y, batch_size=32, verbose=0, callbacks=[schedule])
    assert distiller.distillation_loss_weights == [0.5, 0.25, 0.5, 0.5]
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    for name, layer in [("feature_distillation", "hidden"), ("feature_distillation_1", "logits")]:
        expected = np.mean((layer_output(teacher, layer, x) - layer_output(student, layer, x)) ** 2)
        np.testing.assert_allclose(logs[name], expected, rtol=1e-4)
    t, s = to_np(teacher(x)), to_np(student(x))
    np.testing.assert_allclose(logs["logits_distillation"], ref_kd(t, s, 3.0).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["logits_distillation_1"], ref_kd(t, s, 2.0).mean(), rtol=1e-4)


def test_a_suffix_never_takes_a_name_given_explicitly():
    distiller = keras_distill.Distiller(
        mlp(16), mlp(4), [KD(), KD(), KD(name="kd_1")]
    )
    assert distiller.distillation_loss_names == ["kd", "kd_2", "kd_1"]


class ScaledSquares(keras_distill.DistillationLoss):
    """Written for `keras.distillation`: no `super().__init__()` call."""

    def __init__(self, scale=1.0):
        self.scale = scale
        self.temperature = 2.0

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        t = teacher_outputs / self.temperature
        s = student_outputs / self.temperature
        return self.scale * keras.ops.mean((t - s) ** 2)


def test_a_keras_style_loss_without_super_init_trains_and_logs():
    x, y = classification_data(32)
    teacher, student = mlp(16), mlp(4)
    loss = ScaledSquares(scale=3.0)
    assert loss.name == "scaled_squares" and loss.temperature == 2.0
    distiller = keras_distill.Distiller(teacher, student, loss)
    distiller.compile(loss=SCCE)
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    t, s = to_np(teacher(x)), to_np(student(x))
    np.testing.assert_allclose(logs["scaled_squares"], 3.0 * np.mean(((t - s) / 2.0) ** 2), rtol=1e-4)
    assert distiller.schedulable_variables()["temperature"] == {
        "scaled_squares": loss.temperature_variable
    }


def test_weights_and_temperatures_read_as_the_numbers_given():
    kd = LogitsDistillation(temperature=0.7)
    distiller = keras_distill.Distiller(
        mlp(16), mlp(4), kd, student_loss_weight=0.7, distillation_loss_weights=[0.3]
    )
    assert distiller.student_loss_weight == 0.7 and type(distiller.student_loss_weight) is float
    assert distiller.distillation_loss_weights == [0.3]
    assert kd.temperature == 0.7 and type(kd.temperature) is float
    json.dumps(distiller.get_config())  # every number in it is a plain float
    with pytest.raises(ValueError, match=">= 0"):
        distiller.student_loss_weight = -1.0
    with pytest.raises(ValueError, match="> 0"):
        kd.temperature = 0.0
    with pytest.raises(ValueError, match="2 distillation_loss_weights for 1"):
        distiller.distillation_loss_weights = [0.1, 0.2]


def test_setting_a_number_changes_the_compiled_step():
    x, y = classification_data(32)
    kd = LogitsDistillation(temperature=3.0)
    distiller = keras_distill.Distiller(mlp(16), mlp(4), kd)
    distiller.compile(loss=SCCE, jit_compile=keras.backend.backend() != "torch")
    distiller.test_on_batch(x, y)  # traces the step with the first values
    distiller.student_loss_weight = 0.2
    distiller.distillation_loss_weights = [0.3]
    kd.temperature = 2.0
    logs = distiller.test_on_batch(x, y, return_dict=True)
    t, s = to_np(distiller.teacher(x)), to_np(distiller.student(x))
    np.testing.assert_allclose(logs["logits_distillation"], ref_kd(t, s, 2.0).mean(), rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], 0.2 * logs["student_loss"] + 0.3 * logs["logits_distillation"], rtol=1e-5
    )


def test_the_loss_trackers_read_the_logged_means():
    x, y = classification_data(48)
    distiller = keras_distill.Distiller(mlp(16), mlp(4), KD())
    distiller.compile(loss=SCCE)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    trackers = {
        "student_loss": distiller.student_loss_tracker,
        "distillation_loss": distiller.distillation_loss_tracker,
        "total_loss": distiller.total_loss_tracker,
    }
    for name, tracker in trackers.items():
        assert tracker.name == name
        np.testing.assert_allclose(float(to_np(tracker.result())), logs[name], rtol=1e-6)
    distiller.total_loss_tracker.reset_state()
    assert float(to_np(distiller.total_loss_tracker.result())) == 0.0
    np.testing.assert_allclose(
        float(to_np(distiller.student_loss_tracker.result())), logs["student_loss"], rtol=1e-6
    )


def test_mismatched_structures_name_both():
    teacher = keras.ops.ones((2, 3))
    for loss, student in [
        (LogitsDistillation(), {"output": teacher}),
        (FeatureDistillation(), [teacher, teacher]),
    ]:
        with pytest.raises(ValueError, match=r"structures differ.*\(2, 3\)"):
            loss.validate_outputs(teacher, student)
