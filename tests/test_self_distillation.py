"""Tests of self-distillation: the `MovingAverage` and `Snapshot` teachers,
and `born_again` generations."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.teachers import MovingAverage
from keras_distill.teachers import MultiTeacher
from keras_distill.teachers import Snapshot
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import assert_close
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def assert_weights(model, expected):
    """`model`'s weights are `expected`, array by array."""
    for actual, wanted in zip(model.get_weights(), expected):
        assert_close(actual, wanted)


def bn_mlp(name="student"):
    """A classifier with batch normalisation: trainable and moving state."""
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, name="hidden"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.ReLU(),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )


def distiller(teacher, student, learning_rate=0.1, **kwargs):
    model = keras_distill.Distiller(teacher, student, KD(temperature=2.0), **kwargs)
    model.compile(keras.optimizers.SGD(learning_rate), loss=SCCE)
    return model


def test_moving_average_starts_as_a_copy_and_leaves_the_student_alone():
    student = bn_mlp()
    teacher = MovingAverage(student, decay=0.9)
    x = classification_data(16)[0]
    assert_close(teacher(x), to_np(student(x)))
    assert teacher.student_copy is not student
    assert all(
        a is not b for a, b in zip(teacher.student_copy.variables, student.variables)
    )


def test_moving_average_follows_every_training_step():
    """teacher <- decay * teacher + (1 - decay) * student, per step."""
    x, y = classification_data(64)
    student = bn_mlp()
    teacher = MovingAverage(student, decay=0.9)
    model = distiller(teacher, student)
    start = teacher.get_weights()
    # Batch normalisation updates its statistics in the forward pass, so
    # the average takes them after the step's forward pass: follow it with
    # learning rate 0, where the weights stay and only the statistics move.
    model.optimizer.learning_rate.assign(0.0)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    after = student.get_weights()
    assert not np.allclose(after[-4], start[-4])  # the moving mean moved
    expected = [0.9 * t + 0.1 * s for t, s in zip(start, after)]
    for actual, wanted in zip(teacher.get_weights(), expected):
        assert_close(actual, wanted, rtol=1e-5, atol=1e-6)

    # Two steps with training: the average of the states after each step's
    # forward pass, which for the weights are the states before each update.
    student = mlp(6, name="plain")
    teacher = MovingAverage(student, decay=0.5)
    model = distiller(teacher, student, learning_rate=0.5)
    states = [student.get_weights()]

    class Keep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # (`self.model` brings a JAX loop's state back to the variables.)
            states.append(self.model.student.get_weights())

    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
              callbacks=[Keep()])
    expected = states[0]
    for state in states[:2]:  # the weights each step's teacher pass saw
        expected = [0.5 * t + 0.5 * s for t, s in zip(expected, state)]
    for actual, wanted in zip(teacher.get_weights(), expected):
        assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_moving_average_is_not_trained_and_evaluation_leaves_it():
    x, y = classification_data(32)
    student = mlp(6, name="plain")
    teacher = MovingAverage(student, decay=0.9)
    model = distiller(teacher, student)
    teacher_ids = {id(v) for v in teacher.variables}
    assert not teacher_ids & {id(v) for v in model.trainable_variables}
    student.set_weights([w + 1.0 for w in student.get_weights()])
    before = teacher.get_weights()
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert_weights(teacher, before)


def test_snapshot_takes_the_students_weights_every_n_epochs():
    x, y = classification_data(64)
    student = mlp(6, name="plain")
    teacher = Snapshot(student, every=2)
    initial = teacher.get_weights()
    model = distiller(teacher, student)
    ends = []

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(self.model.student.get_weights())

    model.fit(x, y, epochs=2, verbose=0, callbacks=[Keep()])
    assert_weights(teacher, initial)  # no snapshot before epoch 2
    model.fit(x, y, epochs=5, initial_epoch=2, verbose=0, callbacks=[Keep()])
    # Snapshots at the start of epochs 2 and 4: the student after epoch 3.
    assert_weights(teacher, ends[3])
    assert not np.allclose(ends[3][0], ends[4][0])


def test_snapshot_in_a_train_on_batch_loop_updates_at_begin_epoch():
    x, y = classification_data(64)
    student = mlp(6, name="plain")
    teacher = Snapshot(student, every=1)
    initial = teacher.get_weights()
    model = distiller(teacher, student)
    ends = []
    with warnings.catch_warnings():
        # The loop calls begin_epoch: no warning.
        warnings.filterwarnings("error", message=".*begin_epoch")
        for epoch in range(3):
            model.begin_epoch(epoch)
            if epoch == 0:  # no snapshot at the start of training
                assert_weights(teacher, initial)
            else:  # the student as the previous epoch left it
                assert_weights(teacher, ends[-1])
            for start in range(0, 64, 32):
                model.train_on_batch(x[start:start + 32], y[start:start + 32])
            ends.append(student.get_weights())
    # Between epochs the teacher stays put while the student moves.
    assert not np.allclose(ends[1][0], ends[2][0])
    assert_weights(teacher, ends[1])


def test_train_on_batch_warns_once_when_no_epoch_began():
    x, y = classification_data(32)
    student = mlp(6, name="plain")
    teacher = Snapshot(student, every=1)
    initial = teacher.get_weights()
    model = distiller(teacher, student)
    with pytest.warns(UserWarning, match=r"call begin_epoch\(epoch\)"):
        model.train_on_batch(x, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*begin_epoch")
        model.train_on_batch(x, y)  # warned once
    assert_weights(teacher, initial)  # and no snapshot was taken
    # Teachers that do not update per epoch need no begin_epoch.
    for make_teacher in (MovingAverage, lambda _: mlp(16, name="teacher")):
        student = mlp(6, name="plain")
        model = distiller(make_teacher(student), student)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*begin_epoch")
            model.train_on_batch(x, y)


def test_feature_losses_reach_the_copys_layers():
    x, y = classification_data(32)
    student = mlp(6, name="plain")
    teacher = MovingAverage(student, decay=0.99)
    model = keras_distill.Distiller(
        teacher, student, [KD(temperature=2.0), FitNet("plain/hidden", "hidden")]
    )
    model.compile("adam", loss=SCCE)
    # The hint reads the copy's layer, not the student's own.
    tapped = model._teacher_taps.layers["plain/hidden"]
    assert tapped is teacher.student_copy.get_layer("hidden")
    assert tapped is not student.get_layer("hidden")
    history = model.fit(x, y, epochs=2, verbose=0).history
    assert history["fit_net"][-1] < history["fit_net"][0]


def test_save_and_load_keep_the_teacher_and_its_settings(tmp_path):
    x, y = classification_data(32)
    student = bn_mlp()
    model = distiller(MovingAverage(student, decay=0.95), student)
    model.fit(x, y, epochs=2, verbose=0)
    path = os.path.join(tmp_path, "self.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.teacher, MovingAverage)
    assert loaded.teacher.decay == 0.95
    for actual, wanted in zip(loaded.teacher.get_weights(), model.teacher.get_weights()):
        assert_close(actual, wanted)
    assert not np.allclose(
        loaded.teacher.get_weights()[0], loaded.student.get_weights()[0]
    )
    loaded.fit(x, y, epochs=1, verbose=0)

    snapshot = Snapshot(mlp(4, name="s"), every=3)
    restored = Snapshot.from_config(snapshot.get_config())
    assert restored.every == 3


def test_self_distillation_bad_input():
    student = mlp(6, name="plain")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        MovingAverage(student, decay=1.0)
    with pytest.raises(ValueError, match="int >= 1"):
        Snapshot(student, every=0)
    with pytest.raises(ValueError, match="built Keras model"):
        MovingAverage(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(ValueError, match="not a copy of this student"):
        keras_distill.Distiller(MovingAverage(mlp(7, name="other")), student, KD())


def test_born_again_chains_generations_and_ensembles_them():
    x, y = classification_data(96)
    teacher = mlp(16, name="teacher")
    teacher.compile("adam", loss=SCCE)
    teacher.fit(x, y, epochs=3, verbose=0)
    before = teacher.get_weights()
    taught_by = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            taught_by.append((self.model.teacher.name, self.model.student.name))

    optimizer = keras.optimizers.Adam(0.01)
    students, histories = keras_distill.born_again(
        teacher,
        lambda g: mlp(8, name=f"generation_{g}"),
        generations=3,
        compile_kwargs={"optimizer": optimizer, "loss": SCCE,
                        "metrics": [keras.metrics.SparseCategoricalAccuracy()]},
        x=x, y=y, epochs=2, batch_size=32, verbose=0, callbacks=[Record()],
    )
    assert taught_by == [
        ("teacher", "generation_1"),
        ("generation_1", "generation_2"),
        ("generation_2", "generation_3"),
    ]
    assert [s.name for s in students] == ["generation_1", "generation_2",
                                          "generation_3"]
    assert all(len(h.history["kd"]) == 2 for h in histories)
    # The optimizer object given was copied for each generation, not used.
    assert int(optimizer.iterations.numpy()) == 0
    assert_weights(teacher, before)
    ensemble = MultiTeacher(students, combine="mean_probabilities")
    assert ensemble.predict(x, verbose=0).shape == (96, 3)


def test_born_again_bad_input():
    teacher = mlp(4, name="teacher")
    compile_kwargs = {"optimizer": "adam", "loss": SCCE}
    x, y = classification_data(8)
    with pytest.raises(ValueError, match="int >= 1"):
        keras_distill.born_again(teacher, lambda g: mlp(4), 0, compile_kwargs)
    with pytest.raises(ValueError, match="distinct|like an earlier one"):
        keras_distill.born_again(
            teacher, lambda g: mlp(4, name="same"), 2, compile_kwargs,
            x=x, y=y, verbose=0,
        )
    with pytest.raises(TypeError, match="dict"):
        keras_distill.born_again(teacher, lambda g: mlp(4), 1, "adam")
