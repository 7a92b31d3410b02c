"""Independent float64 NumPy references of the losses, and test helpers.

Written from the papers' formulas, not from the library's code; the tests
compare the library with these.
"""

import math

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


def np_soften_probabilities(p, temperature):
    """Probabilities softened at `temperature`: p^(1/T), renormalised.

    What softmax(logits / T) gives for any logits of p; a probability of 0
    stays 0 at every temperature.
    """
    p = np.asarray(p, np.float64)
    powered = np.where(p > 0, p, 0.0) ** (1.0 / temperature)
    return powered / powered.sum(axis=-1, keepdims=True)


def ref_kd(teacher, student, temperature=1.0, divergence="forward",
           teacher_from_logits=True):
    """T^2 KL(p||q), T^2 KL(q||p) or T^2 JS(p, q), per sample.

    `teacher` holds logits (a logit of -inf is a probability of 0), or
    probabilities with `teacher_from_logits=False`. Where the teacher gives
    classes a probability of 0, the reverse divergence is taken on its
    support: KL(q_S || p), q_S the student's distribution renormalised over
    the classes where p > 0 (with full support, q_S = q).
    """
    if teacher_from_logits:
        p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    else:
        p = np_soften_probabilities(teacher, temperature)
    q = np_softmax(np.asarray(student, np.float64) / temperature)
    if divergence == "forward":
        value = np_kl(p, q)
    elif divergence == "reverse":
        q_support = np.where(p > 0, q, 0.0)
        value = np_kl(q_support / q_support.sum(-1, keepdims=True), p)
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


# ---------------------------------------------------------------------------
# Feature- and attention-based losses
# ---------------------------------------------------------------------------


def ref_hidden_cosine(teacher, student):
    """DistilBERT's cosine-embedding term: 1 - cos(t, s) over the last axis.

    A zero vector has no direction; like `torch.nn.CosineSimilarity` (whose
    norms are clamped by an epsilon) its cosine with anything is taken as 0.
    """
    t = np.asarray(teacher, np.float64)
    s = np.asarray(student, np.float64)
    norms = np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1)
    dot = np.einsum("...d,...d->...", t, s)
    cos = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return 1.0 - cos


def ref_spatial_attention(feature_map, p=2.0):
    """Zagoruyko & Komodakis 2017: the channel-wise mean of |F|^p."""
    f = np.asarray(feature_map, np.float64)
    return np.mean(np.abs(f) ** p, axis=-1)


def np_block_mean(attention, size):
    """Average-pools `(B, H, W)` to `size = (h, w)` by non-overlapping blocks."""
    attention = np.asarray(attention, np.float64)
    batch, height, width = attention.shape
    kh, kw = height // size[0], width // size[1]
    out = np.zeros((batch, size[0], size[1]))
    for i in range(size[0]):
        for j in range(size[1]):
            block = attention[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw]
            out[:, i, j] = block.mean(axis=(1, 2))
    return out


def ref_attention_transfer(teacher_map, student_map, p=2.0):
    """Attention transfer per sample: mean over positions of (a_s - a_t)^2.

    `a` is the flattened, L2-normalised channel mean of |F|^p; on images of
    different spatial sizes the larger map is block-averaged to the smaller.
    """
    a_t = ref_spatial_attention(teacher_map, p)
    a_s = ref_spatial_attention(student_map, p)
    if a_t.ndim == 3 and a_t.shape != a_s.shape:
        if a_t.shape[1] * a_t.shape[2] > a_s.shape[1] * a_s.shape[2]:
            a_t = np_block_mean(a_t, a_s.shape[1:])
        else:
            a_s = np_block_mean(a_s, a_t.shape[1:])
    a_t = a_t.reshape(a_t.shape[0], -1)
    a_s = a_s.reshape(a_s.shape[0], -1)
    a_t = a_t / np.linalg.norm(a_t, axis=-1, keepdims=True)
    a_s = a_s / np.linalg.norm(a_s, axis=-1, keepdims=True)
    return np.mean((a_s - a_t) ** 2, axis=-1)


def grad_wrt(fn, x):
    """d fn(x) / dx as a NumPy array, with the backend's own autodiff.

    The only backend-specific code of the tests: it checks gradients.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(jax.numpy.asarray(x)))
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x).numpy()
    import torch

    x = torch.tensor(x, requires_grad=True)
    fn(x).backward()
    return x.grad.detach().cpu().numpy()


def layer_output(model, layer_name, x):
    """What layer `layer_name` of a Functional `model` gives for `x`."""
    extractor = keras.Model(model.inputs, model.get_layer(layer_name).output)
    return extractor.predict(x, verbose=0)


def fit_and_evaluate(distiller, x, y, loss_name, epochs=3):
    """Trains a compiled Distiller; checks that `loss_name` fell, finitely.

    Returns:
        The `evaluate` logs after training, as a dict.
    """
    history = distiller.fit(x, y, epochs=epochs, batch_size=16, verbose=0).history
    values = np.asarray(history[loss_name])
    assert values.shape == (epochs,)
    assert np.all(np.isfinite(values))
    assert values[-1] < 0.95 * values[0], values
    return distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)


def np_attention_probabilities(query, key, query_kernel, key_kernel,
                               query_bias, key_bias, key_mask=None):
    """Multi-head attention probabilities, softmax(q k^T / sqrt(d)), per head.

    Args:
        query, key: layer inputs `(B, T, D)` and `(B, S, D)`.
        query_kernel, key_kernel: projections `(D, N, d)`; biases `(N, d)`.
        key_mask: optional boolean `(B, S)`; masked keys get probability 0.

    Returns:
        `(B, N, T, S)` probabilities.
    """
    q = np.einsum("btd,dnh->btnh", query, query_kernel) + query_bias
    k = np.einsum("bsd,dnh->bsnh", key, key_kernel) + key_bias
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
    return np_softmax(scores, axis=-1)


def ref_attention_map_loss(teacher, student, kind="mse", key_mask=None):
    """Per-query attention-map divergence `(B, T)`.

    "mse" (TinyBERT): the squared difference of the probabilities, averaged
    over heads and over the keys the mask keeps. "kl" (MiniLM):
    KL(teacher || student) of each query's distribution over keys, averaged
    over heads.
    """
    t = np.asarray(teacher, np.float64)
    s = np.asarray(student, np.float64)
    keep = np.ones(t.shape[-1], bool) if key_mask is None else key_mask
    keep = np.broadcast_to(keep[:, None, None, :] if np.ndim(keep) == 2 else keep, t.shape)
    if kind == "kl":
        used = keep & (t > 0)
        terms = t * (np.log(np.where(used, t, 1.0)) - np.log(np.where(used, s, 1.0)))
        return np.where(used, terms, 0.0).sum(-1).mean(1)
    squared = np.where(keep, (s - t) ** 2, 0.0)
    return (squared.sum(-1) / np.maximum(keep.sum(-1), 1)).mean(1)


# ---------------------------------------------------------------------------
# Relation-based losses: sample pairs and triplets, in explicit loops
# ---------------------------------------------------------------------------


def _np_huber(x):
    return np.where(np.abs(x) < 1.0, 0.5 * x * x, np.abs(x) - 0.5)


def _np_rows(x):
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def ref_rkd_distance(teacher, student, weights=None):
    """Park et al. 2019, distance term: psi = d / mean d over pairs i != j
    (samples of weight 0 left out of the mean); Huber of the difference,
    weighted by w_i w_j, summed over the ordered pairs i != j and divided
    by B^2, the mean over all B^2 pairs (i, i adds 0) that the authors'
    code takes (see `ref_rkd_authors_code`)."""
    t, s = _np_rows(teacher), _np_rows(student)
    b = len(t)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    kept = [(i, j) for i, j in pairs if w[i] != 0 and w[j] != 0]

    def psi(x):
        d = {(i, j): np.linalg.norm(x[i] - x[j]) for i, j in pairs}
        mu = np.mean([d[p] for p in kept])
        return {p: d[p] / mu for p in pairs}

    p_t, p_s = psi(t), psi(s)
    total = sum(w[i] * w[j] * _np_huber(p_s[i, j] - p_t[i, j]) for i, j in pairs)
    return total / b**2


def ref_rkd_angle(teacher, student, weights=None):
    """Park et al. 2019, angle term: for distinct (i, j, k), the cosine of
    the angle at x_j between x_i - x_j and x_k - x_j; Huber of the
    difference, weighted by w_i w_j w_k, summed over the distinct triplets
    and divided by B^3, the mean over all B^3 triplets (degenerate ones add
    0) that the authors' code takes (see `ref_rkd_authors_code`)."""
    t, s = _np_rows(teacher), _np_rows(student)
    b = len(t)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)

    def cos(x, i, j, k):
        u, v = x[i] - x[j], x[k] - x[j]
        return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

    triplets = [
        (i, j, k) for i in range(b) for j in range(b) for k in range(b)
        if len({i, j, k}) == 3
    ]
    total = sum(
        w[i] * w[j] * w[k] * _np_huber(cos(s, i, j, k) - cos(t, i, j, k))
        for i, j, k in triplets
    )
    return total / b**3


def ref_similarity_preserving(teacher, student, weights=None):
    """Tung & Mori 2019: ||G_s/row norms - G_t/row norms||_F^2 / B^2, G the
    Gram matrix over the samples of nonzero weight, pairs weighted w_i w_j."""
    t, s = _np_rows(teacher), _np_rows(student)
    b = len(t)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)
    keep = w != 0

    def similarities(x):
        gram = (x @ x.T) * keep[None, :]
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    difference = similarities(s) - similarities(t)
    return (np.outer(w, w) * difference ** 2).sum() / b ** 2


def ref_pkt(teacher, student, weights=None, eps=1e-7):
    """Passalis & Tefas 2018: P(j|i) from (cos + 1) / 2 over the samples of
    nonzero weight; sum_i w_i KL(P_t(.|i) || P_s(.|i)) / B^2, the mean over
    all B^2 entries that the authors' code takes (`ref_pkt_authors_code`)."""
    t, s = _np_rows(teacher), _np_rows(student)
    b = len(t)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)
    keep = (w != 0).astype(np.float64)

    def conditional(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        kernel = (x @ x.T + 1.0) / 2.0 * keep[None, :]
        return kernel / kernel.sum(axis=1, keepdims=True)

    p_t, p_s = conditional(t), conditional(s)
    kl = (p_t * (np.log(p_t + eps) - np.log(p_s + eps))).sum(axis=1)
    return (w * kl).sum() / b**2


def ref_rkd_authors_code(teacher, student):
    """(distance, angle) terms of RKD as the authors' code computes them.

    A float64 NumPy transcription of `RkdDistance` and `RKdAngle` in
    lenscloth/RKD (metric/loss.py): full `(B, B)` distance and `(B, B, B)`
    cosine matrices, and `F.smooth_l1_loss` with its mean reduction over
    every entry. The paper's weights, 25 and 50, were tuned on these means.
    """
    t, s = _np_rows(teacher), _np_rows(student)

    def pdist(e, eps=1e-12):
        squared = (e**2).sum(1)[:, None] + (e**2).sum(1)[None, :] - 2 * e @ e.T
        d = np.sqrt(np.maximum(squared, eps))
        d[np.arange(len(e)), np.arange(len(e))] = 0.0
        return d

    def normalised_distances(e):
        d = pdist(e)
        return d / d[d > 0].mean()

    def angles(e):
        differences = e[None, :, :] - e[:, None, :]  # [i, j] = e_j - e_i
        norms = np.linalg.norm(differences, axis=2, keepdims=True)
        unit = differences / np.maximum(norms, 1e-12)  # F.normalize
        return np.einsum("ijd,ikd->ijk", unit, unit).reshape(-1)

    distance = _np_huber(normalised_distances(s) - normalised_distances(t)).mean()
    angle = _np_huber(angles(s) - angles(t)).mean()
    return distance, angle


def ref_pkt_authors_code(teacher, student, eps=1e-7):
    """PKT as `cosine_similarity_loss` in passalis/probabilistic_kt computes
    it: `torch.mean` of P_t log((P_t + eps) / (P_s + eps)) over the whole
    `(B, B)` matrix, in float64 NumPy."""
    t, s = _np_rows(teacher), _np_rows(student)

    def conditional(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        similarity = (x @ x.T + 1.0) / 2.0
        return similarity / similarity.sum(axis=1, keepdims=True)

    p_t, p_s = conditional(t), conditional(s)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def ref_correlation_congruence(teacher, student, weights=None, gamma=0.4, order=2):
    """Peng et al. 2019: Gaussian-kernel correlations of the L2-normalised
    embeddings exp(-gamma ||x_i - x_j||^2), or their Taylor series to
    `order` in x_i . x_j; squared Frobenius distance / B^2."""
    t, s = _np_rows(teacher), _np_rows(student)
    b = len(t)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)

    def correlations(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        if order is None:
            squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
            return np.exp(-gamma * squared)
        dot = x @ x.T
        return sum(
            np.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot ** p
            for p in range(order + 1)
        )

    difference = correlations(s) - correlations(t)
    return (np.outer(w, w) * difference ** 2).sum() / b ** 2


def ref_info_nce(anchors, positives, negatives, temperature):
    """Oord et al. 2018 / Tian et al. 2020: -log of the softmax probability
    of the positive among the positive and the K negatives, per anchor."""
    a = np.asarray(anchors, np.float64)
    p = np.asarray(positives, np.float64)
    n = np.asarray(negatives, np.float64)
    out = []
    for anchor, positive in zip(a, p):
        scores = np.concatenate([[anchor @ positive], n @ anchor]) / temperature
        out.append(-(scores[0] - np.log(np.exp(scores).sum())))
    return np.array(out)


# ---------------------------------------------------------------------------
# Stronger logit distillation
# ---------------------------------------------------------------------------


def np_standardize(logits, epsilon=1e-7):
    """Sun et al. 2024: (z - mean) / (epsilon + sample std), per sample."""
    z = np.asarray(logits, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (epsilon + z.std(-1, ddof=1, keepdims=True))


def np_ctkd_decay(epoch, num_loops=10, max_value=0.0, min_value=-1.0):
    """The authors' CosineDecay of the reversal's lambda at their epoch
    (counted from 1): the gradient reaching the temperature is multiplied
    by it."""
    i = min(max(epoch, 0), num_loops)
    value = (math.cos(i * math.pi / num_loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value
