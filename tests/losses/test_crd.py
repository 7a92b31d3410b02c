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


def built_crd(batch=6, queue_size=8, **kwargs):
    """A CRD built directly, as the Distiller builds it: from one tensor per
    model of what its sources read."""
    loss = CRD(embedding_dim=4, queue_size=queue_size, **kwargs)
    assert not loss.built
    t = np.random.default_rng(1).normal(size=(batch, 3, 4)).astype("float32")
    s = np.random.default_rng(2).normal(size=(batch, 5)).astype("float32")
    loss.build([t], [s])
    assert loss.built
    return loss, t, s


def test_direct_call_matches_the_reference_and_only_training_fills_the_queues():
    loss, t, s = built_crd(temperature=0.2)
    # The heads see the features flattened: (B, 3, 4) -> 12 inputs.
    assert tuple(loss.teacher_head.kernel.shape) == (12, 4)
    assert tuple(loss.student_head.kernel.shape) == (5, 4)
    queues = to_np(loss.teacher_queue), to_np(loss.student_queue)

    def embed(head, f):
        z = f.reshape(len(f), -1) @ to_np(head.kernel) + to_np(head.bias)
        return z / np.linalg.norm(z, axis=-1, keepdims=True)

    z_t, z_s = embed(loss.teacher_head, t), embed(loss.student_head, s)
    per_sample = ref_info_nce(z_s, z_t, queues[0], 0.2) + ref_info_nce(z_t, z_s, queues[1], 0.2)
    w = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 1.5], "float32")
    assert_close(loss.compute_loss(t, s, sample_weight=w), (per_sample * w).mean(), rtol=1e-4)
    np.testing.assert_array_equal(to_np(loss.teacher_queue), queues[0])
    # A training step enqueues the batch's embeddings (of every sample).
    value = loss.compute_loss(t, s, training=True)
    assert_close(value, per_sample.mean(), rtol=1e-4)
    assert int(to_np(loss.queue_position)) == 6
    np.testing.assert_allclose(to_np(loss.teacher_queue)[:6], z_t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_np(loss.student_queue)[:6], z_s, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(to_np(loss.teacher_queue)[6:], queues[0][6:])


def test_a_batch_larger_than_the_queue_is_refused():
    loss, t, s = built_crd(batch=8, queue_size=8)
    assert np.isfinite(to_np(loss.compute_loss(t, s)))  # a full queue's worth is fine
    bigger_t = np.concatenate([t, t[:1]])
    bigger_s = np.concatenate([s, s[:1]])
    with pytest.raises(ValueError, match=r"queue_size=8.*batch of 9"):
        loss.compute_loss(bigger_t, bigger_s, training=True)
    assert int(to_np(loss.queue_position)) == 0
    # The same through a Distiller's training step.
    distiller, _ = crd_distiller(queue_size=8)
    x, y = data(16)
    with pytest.raises(ValueError, match=r"queue_size=8.*batch of 16"):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one teacher and one student source"):
        CRD(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="temperature"):
        CRD("a", "b", temperature=0.0)
    with pytest.raises(ValueError, match="queue_size"):
        CRD("a", "b", queue_size=0)
    with pytest.raises(TypeError, match="keyword arguments"):
        CRD(128)  # embedding_dim is a keyword argument
