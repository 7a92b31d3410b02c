"""Chunked token distillation from hidden states: the value against NumPy
on full logits, the gradients against the backend's autodiff through the
full-logit computation, and both the same at every chunk size."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_distill.losses import chunked_token_distillation
from keras_distill.losses import kd
from tests.reference import grad_wrt

B, L, HT, HS, V = 2, 7, 6, 5, 11  # 14 tokens: chunks of 4 leave a remainder
T, KD_WEIGHT, LABEL_WEIGHT = 2.0, 0.7, 0.3


def problem(layout, bias, seed=0):
    rng = np.random.default_rng(seed)
    shape = {"dense": lambda h: (h, V), "embedding": lambda h: (V, h)}[layout]
    return {
        "teacher_hidden": rng.normal(size=(B, L, HT)).astype("float32"),
        "student_hidden": rng.normal(size=(B, L, HS)).astype("float32"),
        "teacher_kernel": rng.normal(size=shape(HT)).astype("float32"),
        "student_kernel": rng.normal(size=shape(HS)).astype("float32"),
        "teacher_bias": rng.normal(size=V).astype("float32") if bias else None,
        "student_bias": rng.normal(size=V).astype("float32") if bias else None,
        "labels": rng.integers(0, V, (B, L)),
        "mask": rng.random((B, L)) > 0.3,
    }


def np_logits(hidden, kernel, bias, layout, cap):
    logits = hidden @ (kernel.T if layout == "embedding" else kernel)
    logits = logits + (0.0 if bias is None else bias)
    return cap * np.tanh(logits / cap) if cap else logits


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_loss(p, layout, cap, divergence):
    """The loss on full logits, in NumPy (float64)."""
    f64 = {k: None if v is None else np.asarray(v, "float64") for k, v in p.items()}
    zt = np_logits(f64["teacher_hidden"], f64["teacher_kernel"], f64["teacher_bias"], layout, cap)
    zs = np_logits(f64["student_hidden"], f64["student_kernel"], f64["student_bias"], layout, cap)
    log_p, log_q = np_log_softmax(zt / T), np_log_softmax(zs / T)
    kl = lambda a, b: (np.exp(a) * (a - b)).sum(-1)  # noqa: E731
    if divergence == "forward":
        value = kl(log_p, log_q)
    elif divergence == "reverse":
        value = kl(log_q, log_p)
    else:
        log_m = np.log((np.exp(log_p) + np.exp(log_q)) / 2)
        value = (kl(log_p, log_m) + kl(log_q, log_m)) / 2
    value = value * T**2
    ce = -np.take_along_axis(np_log_softmax(zs), p["labels"][..., None], -1)[..., 0]
    mask = p["mask"].astype("float64")
    mean = lambda v: (v * mask).sum() / mask.sum()  # noqa: E731
    return KD_WEIGHT * mean(value) + LABEL_WEIGHT * mean(ce), mean(value), mean(ce)


def chunked(p, layout, cap, divergence, chunk_size, **overrides):
    arguments = dict(
        teacher_hidden=p["teacher_hidden"], student_hidden=p["student_hidden"],
        teacher_kernel=p["teacher_kernel"], student_kernel=p["student_kernel"],
        teacher_bias=p["teacher_bias"], student_bias=p["student_bias"],
        labels=p["labels"], mask=p["mask"], temperature=T, divergence=divergence,
        distillation_weight=KD_WEIGHT, label_weight=LABEL_WEIGHT,
        teacher_layout=layout, student_layout=layout,
        teacher_soft_cap=cap, student_soft_cap=cap, chunk_size=chunk_size,
    )
    return chunked_token_distillation(**{**arguments, **overrides})


def full_logits_loss(p, layout, cap, divergence, hidden, kernel, bias):
    """The same loss through full logits, in keras.ops (differentiable)."""
    def logits(h, k, b):
        z = ops.matmul(h, ops.transpose(k) if layout == "embedding" else k)
        z = z if b is None else z + b
        return cap * ops.tanh(z / cap) if cap else z

    teacher = logits(ops.convert_to_tensor(p["teacher_hidden"]),
                     ops.convert_to_tensor(p["teacher_kernel"]),
                     None if p["teacher_bias"] is None else ops.convert_to_tensor(p["teacher_bias"]))
    student = logits(hidden, kernel, bias)
    value = kd(teacher, student, temperature=T, divergence=divergence)
    ce = keras.losses.sparse_categorical_crossentropy(p["labels"], student, from_logits=True)
    mask = ops.cast(p["mask"], "float32")
    mean = lambda v: ops.sum(v * mask) / ops.sum(mask)  # noqa: E731
    return KD_WEIGHT * mean(value) + LABEL_WEIGHT * mean(ce)


CASES = [  # layout, bias, soft cap
    ("dense", True, None),
    ("embedding", False, None),
    ("embedding", False, 3.0),
]


@pytest.mark.parametrize("divergence", ["forward", "reverse", "js"])
@pytest.mark.parametrize("layout,bias,cap", CASES)
def test_value_is_the_full_logit_loss_at_every_chunk_size(layout, bias, cap, divergence):
    p = problem(layout, bias)
    expected, expected_kd, expected_ce = np_loss(p, layout, cap, divergence)
    for chunk_size in (1, 4, 14, 100):
        loss, logs = chunked(p, layout, cap, divergence, chunk_size)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        np.testing.assert_allclose(float(logs["kd"]), expected_kd, rtol=1e-5)
        np.testing.assert_allclose(float(logs["cross_entropy"]), expected_ce, rtol=1e-5)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "js"])
@pytest.mark.parametrize("layout,bias,cap", CASES)
def test_gradients_are_the_full_logit_gradients(layout, bias, cap, divergence):
    """With respect to the student's hidden states, kernel and bias, packed
    into one vector so that one autodiff call gives all three."""
    p = problem(layout, bias, seed=1)
    parts = [p["student_hidden"], p["student_kernel"]] + ([p["student_bias"]] if bias else [])
    sizes = [part.size for part in parts]
    packed = np.concatenate([part.ravel() for part in parts])

    def unpack(x):
        pieces, start = [], 0
        for part, size in zip(parts, sizes):
            pieces.append(ops.reshape(x[start:start + size], part.shape))
            start += size
        return pieces + [None] * (3 - len(pieces))

    def with_chunks(x):
        hidden, kernel, b = unpack(x)
        return chunked(p, layout, cap, divergence, 4, student_hidden=hidden,
                       student_kernel=kernel, student_bias=b)[0]

    def with_full_logits(x):
        return full_logits_loss(p, layout, cap, divergence, *unpack(x))

    expected = grad_wrt(with_full_logits, packed)
    assert np.abs(expected).max() > 1e-3  # the check can fail
    np.testing.assert_allclose(grad_wrt(with_chunks, packed), expected, rtol=1e-5, atol=1e-7)


def test_masked_tokens_change_nothing():
    p = problem("dense", True)
    loss = float(chunked(p, "dense", None, "forward", 4)[0])
    changed = dict(p, student_hidden=np.where(p["mask"][..., None], p["student_hidden"], 1e3),
                   labels=np.where(p["mask"], p["labels"], -100))
    assert float(chunked(changed, "dense", None, "forward", 4)[0]) == pytest.approx(loss, rel=1e-6)


def test_bad_arguments_are_refused_with_the_fix():
    p = problem("dense", False)
    with pytest.raises(ValueError, match="Unknown divergence"):
        chunked(p, "dense", None, "kl", 4)
    with pytest.raises(ValueError, match="Unknown head layout 'tied'"):
        chunked(p, "tied", None, "forward", 4)
    with pytest.raises(ValueError, match="no labels.*pass labels="):
        chunked(p, "dense", None, "forward", 4, labels=None)
    with pytest.raises(ValueError, match="chunk_size must be a whole number"):
        chunked(p, "dense", None, "forward", 0)


class HiddenStateModel(keras.Model):
    """Returns final hidden states; its loss reads its head's kernel."""

    def __init__(self, teacher, teacher_head, use_chunks):
        super().__init__()
        self.body = keras.layers.Dense(HS, activation="tanh")
        self.head = keras.layers.Dense(V)
        self.teacher, self.teacher_head, self.use_chunks = teacher, teacher_head, use_chunks

    def build(self, input_shape):
        self.body.build(input_shape)
        self.head.build((None, HS))

    def call(self, x):
        return self.body(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        teacher_hidden = self.teacher(x)
        if self.use_chunks:
            return chunked_token_distillation(
                teacher_hidden, y_pred, self.teacher_head.kernel, self.head.kernel,
                labels=y, teacher_bias=self.teacher_head.bias, student_bias=self.head.bias,
                temperature=T, distillation_weight=KD_WEIGHT, label_weight=LABEL_WEIGHT,
                chunk_size=4,
            )[0]
        teacher = self.teacher_head(teacher_hidden)
        student = self.head(y_pred)
        ce = keras.losses.sparse_categorical_crossentropy(y, student, from_logits=True)
        return KD_WEIGHT * ops.mean(kd(teacher, student, temperature=T)) + LABEL_WEIGHT * ops.mean(ce)


def test_a_compiled_training_step_matches_the_full_logit_step():
    """One SGD step under the backend's compiler (XLA on JAX and TensorFlow;
    PyTorch runs eagerly) moves every weight as the full-logit step does."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, L, 3)).astype("float32")
    y = rng.integers(0, V, (B, L))
    teacher = keras.layers.Dense(HT)
    teacher_head = keras.layers.Dense(V)
    teacher_head(teacher(x))
    teacher.trainable = teacher_head.trainable = False
    weights = []
    for use_chunks in (True, False):
        keras.utils.set_random_seed(0)
        model = HiddenStateModel(teacher, teacher_head, use_chunks)
        model(x)
        model.compile(keras.optimizers.SGD(0.5), jit_compile=keras.backend.backend() != "torch")
        model.fit(x, y, batch_size=B, epochs=2, verbose=0)
        weights.append([w.numpy() if hasattr(w, "numpy") else np.asarray(w)
                        for w in model.body.get_weights() + model.head.get_weights()])
    for ours, expected in zip(*weights):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    keras.utils.set_random_seed(0)
    untrained = HiddenStateModel(teacher, teacher_head, True)
    untrained(x)
    assert not np.allclose(untrained.body.get_weights()[0], weights[0][0])  # it trained
