"""One step's tensors travel together: `compute_loss` never reads another
batch's features, in `fit`, in custom loops and in several threads."""

import threading

import keras
import numpy as np

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import np_softmax
from tests.reference import ref_kd
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def distiller_with_a_hint():
    keras.utils.set_random_seed(3)
    teacher, student = mlp(16, name="teacher"), mlp(6, name="student")
    distiller = keras_distill.Distiller(
        teacher, student, [KD(temperature=2.0), FitNet("hidden", "hidden")],
        student_loss_weight=0.5, distillation_loss_weights=[1.0, 1.0],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), loss=SCCE)
    return distiller


def np_relu_dense(layer, x):
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    return np.maximum(np.asarray(x, np.float64) @ kernel + bias, 0.0)


def np_total(distiller, x, y):
    """The step's total loss, from the models' weights in NumPy."""
    teacher, student = distiller.teacher, distiller.student
    t_hidden = np_relu_dense(teacher.get_layer("hidden"), x)
    s_hidden = np_relu_dense(student.get_layer("hidden"), x)
    kernel, bias = (np.asarray(w, np.float64) for w in teacher.get_layer("logits").get_weights())
    t_logits = t_hidden @ kernel + bias
    kernel, bias = (np.asarray(w, np.float64) for w in student.get_layer("logits").get_weights())
    s_logits = s_hidden @ kernel + bias
    labels = -np.log(np_softmax(s_logits)[np.arange(len(y)), y]).mean()
    kernel, bias = (np.asarray(w, np.float64) for w in distiller.distillation_losses[1].connectors[0].get_weights())
    hint = np.mean(((s_hidden @ kernel + bias) - t_hidden) ** 2)
    return 0.5 * labels + ref_kd(t_logits, s_logits, 2.0).mean() + hint


def test_a_custom_loop_gets_the_features_of_its_own_batch():
    distiller = distiller_with_a_hint()
    x, y = classification_data(32, seed=1)
    other, _ = classification_data(32, seed=2)
    distiller(other, training=False)  # a pass over another batch first
    y_pred = distiller.student(x, training=False)
    value = distiller.compute_loss(x, y, y_pred=y_pred, training=False)
    expected = np_total(distiller, x, y)
    np.testing.assert_allclose(float(to_np(value)), expected, rtol=1e-4)
    # The same through the Distiller's own call.
    value = distiller.compute_loss(x, y, training=False)
    np.testing.assert_allclose(float(to_np(value)), expected, rtol=1e-4)


def test_a_custom_loop_after_fit_reads_no_traced_tensor():
    # After a compiled `fit`, a step traced inside it left its tensors
    # behind (on JAX, tracers that an eager computation may not touch).
    distiller = distiller_with_a_hint()
    x, y = classification_data(32, seed=1)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    y_pred = distiller.student(x, training=False)
    value = distiller.compute_loss(x, y, y_pred=y_pred, training=False)
    np.testing.assert_allclose(float(to_np(value)), np_total(distiller, x, y), rtol=1e-4)


def test_steps_in_several_threads_use_their_own_passes():
    distiller = distiller_with_a_hint()
    batches = [classification_data(16, seed=s) for s in (4, 5, 6)]
    barrier = threading.Barrier(len(batches))
    values = [None] * len(batches)

    def step(i):
        x, y = batches[i]
        y_pred = distiller(x, training=False)
        barrier.wait(timeout=30)  # every thread's pass is the latest somewhere
        values[i] = float(to_np(distiller.compute_loss(x, y, y_pred, training=False)))

    workers = [threading.Thread(target=step, args=(i,)) for i in range(len(batches))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for (x, y), value in zip(batches, values):
        np.testing.assert_allclose(value, np_total(distiller, x, y), rtol=1e-4)
