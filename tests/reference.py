"""Independent float64 NumPy references of the losses, and test helpers.

Written from the papers' formulas, not from the library's code; the tests
compare the library with these.
"""

import keras
import numpy as np


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
    return np.exp(np_log_softmax(x, axis))


def np_kl(p, q):
    """KL(p || q) over the last axis, with 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    support = p > 0
    log_ratio = np.log(np.where(support, p, 1.0)) - np.log(np.where(support, q, 1.0))
    return np.sum(np.where(support, p * log_ratio, 0.0), axis=-1)


def ref_kd(teacher, student, temperature=1.0, divergence="forward"):
    """T^2 KL(p||q), T^2 KL(q||p) or T^2 JS(p, q), per sample."""
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    q = np_softmax(np.asarray(student, np.float64) / temperature)
    if divergence == "forward":
        value = np_kl(p, q)
    elif divergence == "reverse":
        value = np_kl(q, p)
    else:
        m = (p + q) / 2.0
        value = 0.5 * (np_kl(p, m) + np_kl(q, m))
    return temperature**2 * value


def ref_tckd_nckd(teacher, student, labels, temperature):
    """Zhao et al. 2022: (TCKD, NCKD, teacher's target probability), no T^2."""
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    q = np_softmax(np.asarray(student, np.float64) / temperature)
    target = np.eye(p.shape[-1])[np.asarray(labels)] > 0
    p_target = np.where(target, p, 0.0).sum(-1)
    q_target = np.where(target, q, 0.0).sum(-1)
    tckd = np_kl(
        np.stack([p_target, 1 - p_target], -1),
        np.stack([q_target, 1 - q_target], -1),
    )
    p_rest = np.where(target, 0.0, p)
    q_rest = np.where(target, 0.0, q)
    nckd = np_kl(
        p_rest / p_rest.sum(-1, keepdims=True),
        q_rest / q_rest.sum(-1, keepdims=True),
    )
    return tckd, nckd, p_target


def ref_dkd(teacher, student, labels, alpha=1.0, beta=8.0, temperature=4.0):
    tckd, nckd, _ = ref_tckd_nckd(teacher, student, labels, temperature)
    return temperature**2 * (alpha * tckd + beta * nckd)


def np_pearson(x, y, axis, weights=None):
    """(Weighted) Pearson correlation of x and y along `axis`."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape)
    xc = x - (w * x).sum(axis, keepdims=True) / w.sum(axis, keepdims=True)
    yc = y - (w * y).sum(axis, keepdims=True) / w.sum(axis, keepdims=True)
    return (w * xc * yc).sum(axis) / np.sqrt(
        (w * xc * xc).sum(axis) * (w * yc * yc).sum(axis)
    )


def ref_dist(teacher, student, beta=1.0, gamma=1.0, temperature=1.0, weights=None):
    """Huang et al. 2022 on 2-D (B, C) scores.

    `weights` (B,) weighs samples: inter = sum_i w_i (1 - r_i) / B, and the
    class-wise correlations use weighted means and moments.
    """
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    q = np_softmax(np.asarray(student, np.float64) / temperature)
    n = p.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    inter = np.sum(w * (1.0 - np_pearson(q, p, axis=-1))) / n
    intra = np.mean(1.0 - np_pearson(q, p, axis=0, weights=w[:, None]))
    return temperature**2 * (beta * inter + gamma * intra)




# A small fixed input for the literal-value tests (3 samples, 4 classes).
T_FIXED = [[1.0, 2.0, 0.5, -1.0], [-1.0, 0.0, 3.0, 0.5], [0.25, -0.5, 1.5, 2.0]]
S_FIXED = [[0.5, 1.5, 1.0, 0.0], [0.0, -0.5, 2.0, 1.0], [1.0, 0.0, -1.0, 0.5]]


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def logits(shape, seed, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(to_np(actual), expected, rtol=rtol, atol=atol)
