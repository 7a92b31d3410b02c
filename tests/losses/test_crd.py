"""Tests of `CRD`: InfoNCE against a NumPy reference, the queues, the heads."""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import CRD
from keras_distill.losses import info_nce
from tests.reference import assert_close
from tests.reference import ref_info_nce
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def unit(shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


def test_info_nce_matches_the_reference():
    a, p, n = unit((5, 8), 0), unit((5, 8), 1), unit((12, 8), 2)
    assert_close(info_nce(a, p, n, 0.07), ref_info_nce(a, p, n, 0.07), rtol=1e-4)
    # A positive far closer than every negative costs almost nothing.
    n_far = -np.repeat(a[:1], 12, axis=0)
    assert float(to_np(info_nce(a[:1], a[:1], n_far, 0.07))[0]) < 1e-6


def embedding_model(width, name):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(width, activation="relu", name="features")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)


def crd_distiller(queue_size=16, **kwargs):
    keras.utils.set_random_seed(0)
    loss = CRD("features", "features", embedding_dim=6, queue_size=queue_size,
               **kwargs)
    distiller = keras_distill.Distiller(
        embedding_model(12, "teacher"), embedding_model(5, "student"), loss,
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    return distiller, loss


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, 3, n)


def features(model, x):
    extractor = keras.Model(model.inputs, model.get_layer("features").output)
    return extractor.predict(x, verbose=0)


def test_loss_value_matches_the_reference_and_evaluate_leaves_the_queues():
    distiller, loss = crd_distiller(temperature=0.1)
    x, y = data(8)
    weights = np.linspace(0.0, 2.0, 8).astype("float32")
    before = to_np(loss.teacher_queue), to_np(loss.student_queue)
    logs = distiller.evaluate(x, y, sample_weight=weights, batch_size=8,
                              verbose=0, return_dict=True)

    def embed(head, f):
        z = f @ to_np(head.kernel) + to_np(head.bias)
        # A zero vector (all-zero ReLU features, zero bias) stays zero.
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

    z_t = embed(loss.teacher_head, features(distiller.teacher, x))
    z_s = embed(loss.student_head, features(distiller.student, x))
    per_sample = ref_info_nce(z_s, z_t, before[0], 0.1) + ref_info_nce(
        z_t, z_s, before[1], 0.1
    )
    np.testing.assert_allclose(logs["crd"], (per_sample * weights).mean(), rtol=1e-4)
    np.testing.assert_array_equal(to_np(loss.teacher_queue), before[0])
    assert int(to_np(loss.queue_position)) == 0


def test_training_fills_the_queues_first_in_first_out():
    distiller, loss = crd_distiller(queue_size=12)
    x, y = data(8)
    kernel, bias = to_np(loss.teacher_head.kernel), to_np(loss.teacher_head.bias)
    initial = to_np(loss.teacher_queue)
    distiller.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(to_np(loss.queue_position)) == 8
    # Rows 0-7 now hold the teacher's embeddings of the batch as computed in
    # that step, by the head before its update; rows 8-11 are untouched.
    z = features(distiller.teacher, x) @ kernel + bias
    z /= np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(to_np(loss.teacher_queue)[:8], z, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(to_np(loss.teacher_queue)[8:], initial[8:])
    distiller.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(to_np(loss.queue_position)) == 16 % 12
    assert loss.teacher_queue.shape == (12, 6)  # whatever the data seen


def test_training_aligns_the_embeddings_and_the_heads_are_trained():
    distiller, loss = crd_distiller(queue_size=32)
    assert any(v is loss.teacher_head.kernel for v in distiller.trainable_variables)
    x, y = data(64)
    history = distiller.fit(x, y, batch_size=16, epochs=8, verbose=0).history
    assert np.all(np.isfinite(history["crd"]))
    assert history["crd"][-1] < history["crd"][0]


def test_saved_and_reloaded_with_its_queues(tmp_path):
    distiller, loss = crd_distiller()
    x, y = data(16)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "crd.keras")
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    restored = reloaded.distillation_losses[0]
    np.testing.assert_array_equal(to_np(restored.teacher_queue), to_np(loss.teacher_queue))
    assert int(to_np(restored.queue_position)) == int(to_np(loss.queue_position))
    assert CRD.from_config(loss.get_config()).get_config() == loss.get_config()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="name the layers"):
        CRD()
    with pytest.raises(ValueError, match="temperature"):
        CRD("a", "b", temperature=0.0)
