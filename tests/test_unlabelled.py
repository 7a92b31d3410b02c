"""Samples labelled `UNLABELLED`: in the distillation losses, not in the label loss."""

import keras
import numpy as np
import pytest

import keras_distill
from tests.reference import assert_close
from tests.reference import np_log_softmax
from tests.reference import ref_dkd
from tests.reference import ref_kd

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def linear(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, 4, n)
    y[rng.permutation(n)[: n // 3 * 2]] = keras_distill.UNLABELLED
    return x, y


def distiller(loss=None, metrics=("accuracy",), optimizer="sgd"):
    model = keras_distill.Distiller(
        linear(0), linear(1), loss or keras_distill.losses.KD(temperature=2.0)
    )
    model.compile(optimizer, SCCE, metrics=list(metrics))
    return model


def np_cross_entropy(logits, y):
    return -np_log_softmax(logits)[np.arange(len(y)), y]


def test_label_loss_and_metrics_read_the_labelled_samples_alone():
    x, y = data()
    model = distiller()
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    t = model.teacher.predict(x, verbose=0)
    labelled = y >= 0
    assert_close(logs["student_loss"], np_cross_entropy(s[labelled], y[labelled]).mean())
    assert_close(logs["accuracy"], (s.argmax(-1) == y)[labelled].mean())
    # KD reads every sample, labelled or not.
    assert_close(logs["kd"], ref_kd(t, s, 2.0).mean())


def test_sample_weights_weigh_the_labelled_samples():
    x, y = data()
    weights = np.linspace(0.5, 2.0, len(x)).astype("float32")
    model = distiller()
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=len(x),
                          return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    labelled = y >= 0
    losses = np_cross_entropy(s[labelled], y[labelled]) * weights[labelled]
    # Keras's masked mean: the weighted sum over the labelled count.
    assert_close(logs["student_loss"], losses.sum() / labelled.sum())


def test_a_batch_without_labels_has_a_label_loss_of_zero():
    x, _ = data()
    y = np.full(len(x), keras_distill.UNLABELLED)
    model = distiller()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["student_loss"] == 0.0
    assert np.isfinite(logs["kd"]) and logs["kd"] > 0


def test_the_same_step_with_labels_for_all():
    """Without `UNLABELLED`, the numbers are those of the unmasked step."""
    x, y = data()
    y = np.abs(y)
    model = distiller()
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    assert_close(logs["student_loss"], np_cross_entropy(s, y).mean())
    assert not model._unlabelled_possible


def test_labels_that_arrive_later_retrace_the_steps():
    x, y = data()
    model = distiller()
    model.fit(x, np.abs(y), epochs=1, batch_size=len(x), verbose=0)
    # The compiled step had no mask; labels with UNLABELLED trace it again.
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0,
              validation_data=(x, y))
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    labelled = y >= 0
    assert_close(logs["student_loss"], np_cross_entropy(s[labelled], y[labelled]).mean())


def test_validation_labels_are_masked_from_the_start_of_fit():
    x, y = data()
    model = distiller()
    history = model.fit(x, np.abs(y), epochs=1, batch_size=len(x), verbose=0,
                        validation_data=(x, y))
    s = model.student.predict(x, verbose=0)
    labelled = y >= 0
    assert_close(history.history["val_accuracy"][0], (s.argmax(-1) == y)[labelled].mean())


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[part], self.y[part]


def test_a_dataset_may_hold_unlabelled_samples_anywhere():
    x, y = data()
    model = distiller()
    logs = model.evaluate(Batches(x, y, len(x)), return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    labelled = y >= 0
    assert_close(logs["student_loss"], np_cross_entropy(s[labelled], y[labelled]).mean())


def test_dkd_takes_the_teachers_top_class_for_an_unlabelled_sample():
    x, y = data()
    model = distiller(keras_distill.losses.DKD(temperature=2.0))
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s = model.student.predict(x, verbose=0)
    t = model.teacher.predict(x, verbose=0)
    targets = np.where(y >= 0, y, t.argmax(-1))
    assert_close(logs["dkd"], ref_dkd(t, s, targets, temperature=2.0).mean())


@pytest.mark.requires_trainable_backend
def test_unlabelled_samples_train_the_student_on_the_teacher_alone():
    """With no label at all, the student still learns from the teacher."""
    x, _ = data(64)
    y = np.full(len(x), keras_distill.UNLABELLED)
    model = distiller(metrics=(), optimizer=keras.optimizers.Adam(0.05))
    before = model.evaluate(x, y, return_dict=True, verbose=0)["kd"]
    model.fit(x, y, epochs=20, batch_size=16, verbose=0)
    after = model.evaluate(x, y, return_dict=True, verbose=0)["kd"]
    assert after < 0.5 * before
