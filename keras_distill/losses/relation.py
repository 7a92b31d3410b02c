"""Relation-based distillation: how the samples of a batch relate.

These losses transfer the structure of the teacher's representation - the
distances, angles, similarities or correlations between the samples of a
batch - rather than the representation itself, so teacher and student
widths may differ freely. Each reads one tensor per model, the output of a
tapped layer or a model output, flattened to `(B, D)`.

Sample weights weigh relations: a pair `(i, j)` counts `w_i * w_j` (a
triplet `w_i * w_j * w_k`). Each loss reduces as its authors' reference code
does, so that the published weights mean what they meant: RKD averages over
all `B^2` pairs and `B^3` triplets (coincident samples add 0), PKT over all
`B^2` entries of its conditional distributions, SP and CC divide by `B^2` as
their papers do. Normalisers (the mean distance of RKD, the row norms of
SP, PKT's conditional probabilities, ...) are taken over the samples of
nonzero weight, so a sample of weight 0 changes nothing but the count.

Memory: the pairwise terms hold a few `(B, B)` matrices, computed from the
Gram matrix of the features; the RKD angle term also holds a few
`(B, B, B)` tensors of the angles, `4 * B^3` bytes each: 64 MiB at
B = 256.
"""

import math

import keras
from keras import ops

from keras_distill.losses.base import BatchLoss

_EPS = 1e-12
# RKD angles: rows whose squared distance is below this share of
# |x_i|^2 + |x_j|^2 (centred) count as coincident (see `rkd_angle`).
_COINCIDENT = 1e-5


def _flat(x):
    x = ops.cast(x, "float32")
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _present(weights):
    """1.0 for samples of nonzero weight, as a float32 `(B,)`."""
    return ops.cast(ops.not_equal(weights, 0.0), "float32")


def _weights(x, sample_weight):
    if sample_weight is None:
        return ops.ones((ops.shape(x)[0],), "float32")
    return ops.reshape(ops.cast(sample_weight, "float32"), (-1,))


def _off_diagonal(x):
    """`1 - I`, the mask of pairs of distinct samples, for `(B, D)` `x`."""
    return 1.0 - ops.eye(ops.shape(x)[0], dtype="float32")


def _huber(x):
    """Smooth L1 (Huber with delta 1), elementwise."""
    magnitude = ops.abs(x)
    return ops.where(magnitude < 1.0, 0.5 * x * x, magnitude - 0.5)


def _l2_normalize(x):
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), _EPS))


def _centred(x, present):
    """The rows of `x` less the mean of the rows that are `present`."""
    count = ops.maximum(ops.sum(present), 1.0)
    return x - ops.sum(x * present[:, None], axis=0, keepdims=True) / count


def pairwise_distances(x, present=None):
    """Euclidean distances between the rows of `x` `(B, D)`, `(B, B)`.

    Computed from the Gram matrix of the rows, centred on the mean of the
    `present` ones (1.0 or 0.0 per row; all by default), which changes
    nothing but rounding; squared distances are floored at 1e-12 before the
    square root, so that gradients stay finite where two rows coincide.
    """
    if present is None:
        present = ops.ones((ops.shape(x)[0],), "float32")
    x = _centred(x, present)
    gram = ops.matmul(x, ops.transpose(x))
    norms = ops.diagonal(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    return ops.sqrt(ops.maximum(squared, _EPS))


def rkd_distance(teacher, student, sample_weight=None):
    """RKD's distance term: pairwise distances, each over its mean.

    `psi(x_i, x_j) = ||x_i - x_j|| / mu`, with `mu` the mean distance over
    pairs of distinct samples; the loss is the mean of `huber(psi_s - psi_t)`
    over all `B^2` ordered pairs (a sample and itself add 0), as the
    authors' code averages it, so that their weight of 25 applies as is.
    Scaling either model's embeddings leaves it unchanged.

    Args:
        teacher: teacher embeddings `(B, D_t)`.
        student: student embeddings `(B, D_s)`.
        sample_weight: optional weights `(B,)`. Defaults to `None`.

    Returns:
        A float32 scalar.

    Reference:
        Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR
        2019.
    """
    t, s = _flat(teacher), _flat(student)
    w = _weights(t, sample_weight)
    pairs = _off_diagonal(t)
    present = _present(w)
    in_mean = pairs * present[:, None] * present[None, :]

    def normalised(x):
        d = pairwise_distances(x, present)
        mu = ops.sum(d * in_mean) / ops.maximum(ops.sum(in_mean), 1.0)
        return d / ops.maximum(mu, _EPS)

    terms = _huber(normalised(s) - normalised(t)) * pairs * w[:, None] * w[None, :]
    return ops.sum(terms) / ops.cast(ops.shape(t)[0] ** 2, "float32")


def rkd_angle(teacher, student, sample_weight=None):
    """RKD's angle term: cosines of the angles that triplets of samples form.

    For distinct `i, j, k`, the cosine of the angle at `x_j` between
    `x_i - x_j` and `x_k - x_j`; the loss is the mean of
    `huber(cos_s - cos_t)` over all `B^3` triplets (degenerate ones add 0),
    as the authors' code averages it, so that their weight of 50 applies as
    is. Translating or scaling embeddings leaves it unchanged. The cosines
    come from the `(B, B)` Gram matrix of the centred embeddings; in
    float32 it gives a squared distance to about
    `1e-7 (|x_i|^2 + |x_j|^2)`, so two samples closer than
    `sqrt(1e-5 (|x_i|^2 + |x_j|^2))` count as coincident: no direction
    leads from one to the other (cosine 0), as for equal samples. Work and
    memory grow as `B^2 * D + B^3`.

    Args:
        teacher: teacher embeddings `(B, D_t)`.
        student: student embeddings `(B, D_s)`.
        sample_weight: optional weights `(B,)`. Defaults to `None`.

    Returns:
        A float32 scalar.

    Reference:
        Park et al., "Relational Knowledge Distillation", CVPR 2019.
    """
    t, s = _flat(teacher), _flat(student)
    w = _weights(t, sample_weight)
    present = _present(w)

    def cosines(x):
        # Dot products and lengths from the Gram matrix G of the rows
        # centred on the samples present, <x_i - x_j, x_k - x_j> = G_ik -
        # G_ij - G_jk + G_jj and |x_i - x_j|^2 = G_ii + G_jj - 2 G_ij, so
        # that neither B^3 * D products nor the (B, B, D) differences are
        # formed.
        x = _centred(x, present)
        gram = ops.matmul(x, ops.transpose(x))
        norms = ops.diagonal(gram)
        scale = norms[:, None] + norms[None, :]
        squared = scale - 2.0 * gram  # [j, i]
        apart = ops.greater(squared, _COINCIDENT * scale)
        inverse = ops.where(
            apart, 1.0 / ops.sqrt(ops.where(apart, squared, 1.0)), 0.0
        )
        dots = (gram[None, :, :] - gram[:, :, None] - gram[:, None, :]
                + norms[:, None, None])  # [j, i, k]
        cosines = dots * inverse[:, :, None] * inverse[:, None, :]
        return ops.clip(cosines, -1.0, 1.0)

    distinct = _off_diagonal(t)
    triplets = distinct[:, :, None] * distinct[:, None, :] * distinct[None, :, :]
    weights = w[:, None, None] * w[None, :, None] * w[None, None, :]
    terms = _huber(cosines(s) - cosines(t)) * triplets * weights
    return ops.sum(terms) / ops.cast(ops.shape(t)[0] ** 3, "float32")


def similarity_preserving(teacher, student, sample_weight=None):
    """SP: the batch similarity (Gram) matrices, row-normalised, compared.

    `G = F F^T` over the flattened features, each row divided by its L2
    norm; the loss is the squared Frobenius distance between the student's
    and the teacher's, divided by `B^2`.

    Args:
        teacher: teacher features `(B, ...)`.
        student: student features `(B, ...)`.
        sample_weight: optional weights `(B,)`. Defaults to `None`.

    Returns:
        A float32 scalar.

    Reference:
        Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV
        2019.
    """
    t, s = _flat(teacher), _flat(student)
    w = _weights(t, sample_weight)
    present = _present(w)

    def similarities(x):
        gram = ops.matmul(x, ops.transpose(x)) * present[None, :]
        return _l2_normalize(gram)

    pair_weights = w[:, None] * w[None, :]
    difference = similarities(s) - similarities(t)
    count = ops.cast(ops.shape(t)[0], "float32") ** 2
    return ops.sum(ops.square(difference) * pair_weights) / count


def pkt(teacher, student, sample_weight=None, eps=1e-7):
    """PKT: KL between cosine-similarity distributions over the batch.

    Each sample's cosine similarities to the batch, mapped to `[0, 1]` by
    `(cos + 1) / 2` and normalised to sum to one, form a conditional
    distribution `P(j | i)`; the loss is the mean over all `B^2` entries of
    `P_t(j | i) log(P_t(j | i) / P_s(j | i))`, as Passalis & Tefas's code
    computes it (the mean over samples of `KL(P_t(. | i) || P_s(. | i))`,
    divided by `B`).

    Args:
        teacher: teacher features `(B, ...)`.
        student: student features `(B, ...)`.
        sample_weight: optional weights `(B,)`. Defaults to `None`.
        eps: added to both probabilities inside the logarithm. Defaults to
            1e-7.

    Returns:
        A float32 scalar.

    Reference:
        Passalis and Tefas, "Learning Deep Representations with
        Probabilistic Knowledge Transfer", ECCV 2018.
    """
    t, s = _flat(teacher), _flat(student)
    w = _weights(t, sample_weight)
    present = _present(w)

    def conditionals(x):
        x = _l2_normalize(x)
        kernel = (ops.matmul(x, ops.transpose(x)) + 1.0) / 2.0 * present[None, :]
        return kernel / ops.maximum(ops.sum(kernel, axis=-1, keepdims=True), _EPS)

    p_t, p_s = conditionals(t), conditionals(s)
    per_sample = ops.sum(p_t * (ops.log(p_t + eps) - ops.log(p_s + eps)), axis=-1)
    return ops.sum(per_sample * w) / ops.cast(ops.shape(t)[0] ** 2, "float32")


def correlation_congruence(
    teacher, student, sample_weight=None, gamma=0.4, order=2
):
    """CC: congruence of the samples' correlation (kernel) matrices.

    With L2-normalised embeddings, the correlation of two samples is the
    Gaussian kernel `exp(-gamma * ||x_i - x_j||^2) = exp(-2 gamma) *
    exp(2 gamma x_i . x_j)`, or (`order=P`) its Taylor expansion to order
    P, `exp(-2 gamma) * sum_{p<=P} (2 gamma x_i . x_j)^p / p!`, as in the
    paper. The loss is the squared Frobenius distance between the student's
    and the teacher's correlation matrices, divided by `B^2`.

    Args:
        teacher: teacher embeddings `(B, D_t)`.
        student: student embeddings `(B, D_s)`.
        sample_weight: optional weights `(B,)`. Defaults to `None`.
        gamma: the kernel's width parameter. Defaults to 0.4.
        order: the Taylor order P, or `None` for the exact kernel. Defaults
            to 2.

    Returns:
        A float32 scalar.

    Reference:
        Peng, Jin, Liu, Li, Wu, Liu, Zhou and Zhang, "Correlation Congruence
        for Knowledge Distillation", ICCV 2019.
    """
    t, s = _flat(teacher), _flat(student)
    w = _weights(t, sample_weight)

    def correlations(x):
        x = _l2_normalize(x)
        scaled = 2.0 * gamma * ops.matmul(x, ops.transpose(x))
        if order is None:
            return ops.exp(scaled - 2.0 * gamma)
        # Each term from the one before (x^p / p! = x^(p-1) / (p-1)! * x / p):
        # no power, whose TensorFlow gradient at x = 0 is 0 * x^-1 = NaN for
        # p = 0, and post-ReLU features give exact zeros.
        term = ops.ones_like(scaled)
        series = term
        for p in range(1, order + 1):
            term = term * scaled / p
            series = series + term
        return math.exp(-2.0 * gamma) * series

    difference = correlations(s) - correlations(t)
    count = ops.cast(ops.shape(t)[0], "float32") ** 2
    return ops.sum(ops.square(difference) * w[:, None] * w[None, :]) / count


@keras.saving.register_keras_serializable(package="keras_distill")
class RKD(BatchLoss):
    """Relational knowledge distillation: distances and angles (Park 2019).

    `distance_weight * rkd_distance + angle_weight * rkd_angle`, each
    averaged over all pairs (triplets) of the batch as the authors' code
    does, so that the paper's weights (25 and 50) are the defaults. The
    angle term costs `O(B^2 (D + B))` memory; set `angle_weight=0` to skip
    it. Reads any tensor of each model (flattened to `(B, D)`): their
    outputs by default, or a layer, e.g. `RKD("embedding", "embedding")`.

    Args:
        teacher: the teacher's embeddings: `None` (its output) or a source.
            Defaults to `None`.
        student: the student's embeddings. Defaults to `None`.
        distance_weight: weight of the distance term. Defaults to 25 (the
            paper's).
        angle_weight: weight of the angle term. Defaults to 50 (the
            paper's).
        name: the loss's name. Defaults to `"rkd"`.

    Example:

    ```python
    keras_distill.losses.RKD("embedding", "embedding")
    ```

    Reference:
        Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR
        2019.
    """

    def __init__(
        self, teacher=None, student=None, *, distance_weight=25.0,
        angle_weight=50.0, name=None, **kwargs
    ):
        super().__init__(teacher, student, name=name, **kwargs)
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                "RKD: `distance_weight` and `angle_weight` must be >= 0; "
                f"received {distance_weight} and {angle_weight}."
            )
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def compute(self, context):
        loss = 0.0
        t, s, w = context.teacher, context.student, context.sample_weight
        if self.distance_weight:
            loss += self.distance_weight * rkd_distance(t, s, w)
        if self.angle_weight:
            loss += self.angle_weight * rkd_angle(t, s, w)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class SimilarityPreserving(BatchLoss):
    """Similarity-preserving distillation (Tung & Mori 2019).

    Matches the row-normalised batch similarity matrices of the teacher's
    and the student's features (`similarity_preserving`). The paper weighs
    it by gamma = 3000 against the label loss.

    Args:
        teacher: the teacher's features: `None` (its output) or a source.
            Defaults to `None`.
        student: the student's features. Defaults to `None`.
        name: the loss's name. Defaults to `"similarity_preserving"`.

    Example:

    ```python
    keras_distill.losses.SimilarityPreserving("block3", "block3")
    ```

    Reference:
        Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV
        2019.
    """

    def compute(self, context):
        return similarity_preserving(
            context.teacher, context.student, context.sample_weight
        )


@keras.saving.register_keras_serializable(package="keras_distill")
class PKT(BatchLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018).

    KL divergence between the teacher's and the student's distributions of
    cosine similarities over the batch (`pkt`), reduced as the authors'
    code does.

    Args:
        teacher: the teacher's features: `None` (its output) or a source.
            Defaults to `None`.
        student: the student's features. Defaults to `None`.
        name: the loss's name. Defaults to `"pkt"`.

    Example:

    ```python
    keras_distill.losses.PKT("embedding", "embedding")
    ```

    Reference:
        Passalis and Tefas, "Learning Deep Representations with
        Probabilistic Knowledge Transfer", ECCV 2018.
    """

    def compute(self, context):
        return pkt(context.teacher, context.student, context.sample_weight)


@keras.saving.register_keras_serializable(package="keras_distill")
class CorrelationCongruence(BatchLoss):
    """Correlation congruence (Peng et al. 2019).

    Matches the Gaussian-kernel correlation matrices of the L2-normalised
    embeddings, or their Taylor approximation (`correlation_congruence`),
    divided by `B^2` as in the paper.

    Args:
        teacher: the teacher's embeddings: `None` (its output) or a source.
            Defaults to `None`.
        student: the student's embeddings. Defaults to `None`.
        gamma: the kernel's width parameter. Defaults to 0.4.
        order: the Taylor order, or `None` for the exact Gaussian kernel.
            Defaults to 2.
        name: the loss's name. Defaults to `"correlation_congruence"`.

    Example:

    ```python
    keras_distill.losses.CorrelationCongruence(order=None)  # exact kernel
    ```

    Reference:
        Peng et al., "Correlation Congruence for Knowledge Distillation",
        ICCV 2019.
    """

    def __init__(
        self, teacher=None, student=None, *, gamma=0.4, order=2, name=None, **kwargs
    ):
        super().__init__(teacher, student, name=name, **kwargs)
        if gamma <= 0:
            raise ValueError(f"CorrelationCongruence: `gamma` must be > 0; received {gamma}.")
        if order is not None and (not isinstance(order, int) or order < 0):
            raise ValueError(
                "CorrelationCongruence: `order` must be an int >= 0, or None "
                f"for the exact Gaussian kernel; received {order!r}."
            )
        self.gamma = float(gamma)
        self.order = order

    def compute(self, context):
        return correlation_congruence(
            context.teacher, context.student, context.sample_weight, self.gamma,
            self.order,
        )

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "order": self.order}
