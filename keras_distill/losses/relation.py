"""Relation-based distillation: how the samples of a batch relate.

These losses transfer the structure of the teacher's representation - the
distances, angles, similarities or correlations between the samples of a
batch - rather than the representation itself, so teacher and student
widths may differ freely. Each reads one tensor per model, the output of a
tapped layer or a model output, flattened to `(B, D)`.

Sample weights weigh relations: a pair `(i, j)` counts `w_i * w_j` (a
triplet `w_i * w_j * w_k`), and averages divide by the number of pairs, as
Keras's `"sum_over_batch_size"` divides by the batch size. Normalisers (the
mean distance of RKD, the row norms of SP, PKT's conditional probabilities,
...) are taken over the samples of nonzero weight, so a sample of weight 0
takes no part at all.

Memory: the pairwise terms hold a few `(B, B)` matrices, computed from the
Gram matrix of the features; the RKD angle term also holds a few
`(B, B, B)` tensors of the angles, `4 * B^3` bytes each: 64 MiB at
B = 256.
"""

import math

import keras
from keras import ops

from keras_distill.losses.base import DistillationLoss

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


def pairwise_distances(x):
    """Euclidean distances between the rows of `x` `(B, D)`, `(B, B)`.

    Computed from the Gram matrix of the centred rows; squared distances
    are floored at 1e-12 before the square root, so that gradients stay
    finite where two rows coincide.
    """
    x = x - ops.mean(x, axis=0, keepdims=True)
    gram = ops.matmul(x, ops.transpose(x))
    norms = ops.diagonal(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    return ops.sqrt(ops.maximum(squared, _EPS))


def rkd_distance(teacher, student, sample_weight=None):
    """RKD's distance term: pairwise distances, each over its mean.

    `psi(x_i, x_j) = ||x_i - x_j|| / mu`, with `mu` the mean distance over
    pairs of distinct samples; the loss averages `huber(psi_s - psi_t)`
    over those pairs. Scaling either model's embeddings leaves it unchanged.

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
        d = pairwise_distances(x)
        mu = ops.sum(d * in_mean) / ops.maximum(ops.sum(in_mean), 1.0)
        return d / ops.maximum(mu, _EPS)

    terms = _huber(normalised(s) - normalised(t)) * pairs * w[:, None] * w[None, :]
    return ops.sum(terms) / ops.maximum(ops.sum(pairs), 1.0)


def rkd_angle(teacher, student, sample_weight=None):
    """RKD's angle term: cosines of the angles that triplets of samples form.

    For distinct `i, j, k`, the cosine of the angle at `x_j` between
    `x_i - x_j` and `x_k - x_j`; the loss averages `huber(cos_s - cos_t)`
    over those triplets. Translating or scaling embeddings leaves it
    unchanged. The cosines come from the `(B, B)` Gram matrix of the
    centred embeddings; in float32 it gives a squared distance to about
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

    def cosines(x):
        # Dot products and lengths from the Gram matrix G of the centred
        # rows, <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj and
        # |x_i - x_j|^2 = G_ii + G_jj - 2 G_ij, so that neither B^3 * D
        # products nor the (B, B, D) differences are formed.
        x = x - ops.mean(x, axis=0, keepdims=True)
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
    return ops.sum(terms) / ops.maximum(ops.sum(triplets), 1.0)


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
    distribution `P(j | i)`; the loss is `KL(P_t(. | i) || P_s(. | i))`
    per sample, averaged. Passalis & Tefas's code averages over all `B^2`
    entries instead, which is this divided by `B`.

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
    return ops.sum(per_sample * w) / ops.cast(ops.shape(t)[0], "float32")


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
        series = sum(ops.power(scaled, p) / math.factorial(p) for p in range(order + 1))
        return math.exp(-2.0 * gamma) * series

    difference = correlations(s) - correlations(t)
    count = ops.cast(ops.shape(t)[0], "float32") ** 2
    return ops.sum(ops.square(difference) * w[:, None] * w[None, :]) / count


class RelationLoss(DistillationLoss):
    """Base class of losses on the relations between a batch's samples.

    Reads one tensor per model: the output of `teacher_layer` and
    `student_layer` when given, else the models' output (`output=` picks one
    of several), flattened to `(B, D)`. Subclasses implement
    `relation_loss(teacher, student, sample_weight)`.

    Args:
        teacher_layer: a teacher layer name or path, or `None` for the
            teacher's output. Defaults to `None`.
        student_layer: the matching student layer, given together with
            `teacher_layer`. Defaults to `None`.
        output: which output of multi-output models, when no layers are
            named. Defaults to `None`.
        name: the loss's name in the logs.
        **kwargs: other `DistillationLoss` arguments.
    """

    def __init__(
        self, teacher_layer=None, student_layer=None, output=None, name=None, **kwargs
    ):
        super().__init__(output=output, name=name, **kwargs)
        if (teacher_layer is None) != (student_layer is None):
            raise ValueError(
                f"{type(self).__name__} reads a teacher layer and a student "
                "layer together: give both `teacher_layer` and "
                "`student_layer`, or neither to use the models' outputs. "
                f"Received teacher_layer={teacher_layer!r}, "
                f"student_layer={student_layer!r}."
            )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer

    def teacher_layers(self):
        return () if self.teacher_layer is None else (self.teacher_layer,)

    def student_layers(self):
        return () if self.student_layer is None else (self.student_layer,)

    def compute_loss(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        sample_weight=None,
        inputs=None,
    ):
        if self.teacher_layer is None:
            teacher, student = self.selected_pair(teacher_outputs, student_outputs)
        else:
            teacher = teacher_outputs[self.teacher_layer]
            student = student_outputs[self.student_layer]
        return self.relation_loss(teacher, student, sample_weight)

    def relation_loss(self, teacher, student, sample_weight=None):
        raise NotImplementedError

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class RKD(RelationLoss):
    """Relational knowledge distillation: distances and angles (Park 2019).

    `distance_weight * rkd_distance + angle_weight * rkd_angle`. The angle
    term costs `O(B^2 (D + B))` memory; set `angle_weight=0` to skip it.

    Args:
        distance_weight: weight of the distance term. Defaults to 25 (the
            paper's).
        angle_weight: weight of the angle term. Defaults to 50 (the
            paper's).
        teacher_layer: the teacher layer to read, as in `RelationLoss`.
        student_layer: the student layer to read, as in `RelationLoss`.
        output: the output to read without layers, as in `RelationLoss`.
        name: the loss's name. Defaults to `"rkd"`.

    Example:

    ```python
    keras_distill.losses.RKD(teacher_layer="embedding", student_layer="embedding")
    ```

    Reference:
        Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR
        2019.
    """

    def __init__(
        self,
        distance_weight=25.0,
        angle_weight=50.0,
        teacher_layer=None,
        student_layer=None,
        output=None,
        name=None,
        **kwargs,
    ):
        super().__init__(teacher_layer, student_layer, output, name, **kwargs)
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                "RKD: `distance_weight` and `angle_weight` must be >= 0; "
                f"received {distance_weight} and {angle_weight}."
            )
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def relation_loss(self, teacher, student, sample_weight=None):
        loss = 0.0
        if self.distance_weight:
            loss += self.distance_weight * rkd_distance(teacher, student, sample_weight)
        if self.angle_weight:
            loss += self.angle_weight * rkd_angle(teacher, student, sample_weight)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class SimilarityPreserving(RelationLoss):
    """Similarity-preserving distillation (Tung & Mori 2019).

    Matches the row-normalised batch similarity matrices of the teacher's
    and the student's features (`similarity_preserving`). The paper weighs
    it by gamma = 3000 against the label loss.

    Args:
        teacher_layer: the teacher layer to read, as in `RelationLoss`.
        student_layer: the student layer to read, as in `RelationLoss`.
        output: the output to read without layers, as in `RelationLoss`.
        name: the loss's name. Defaults to `"similarity_preserving"`.

    Example:

    ```python
    keras_distill.losses.SimilarityPreserving("block3", "block3")
    ```

    Reference:
        Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV
        2019.
    """

    def relation_loss(self, teacher, student, sample_weight=None):
        return similarity_preserving(teacher, student, sample_weight)


@keras.saving.register_keras_serializable(package="keras_distill")
class PKT(RelationLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018).

    KL divergence between the teacher's and the student's distributions of
    cosine similarities over the batch (`pkt`).

    Args:
        teacher_layer: the teacher layer to read, as in `RelationLoss`.
        student_layer: the student layer to read, as in `RelationLoss`.
        output: the output to read without layers, as in `RelationLoss`.
        name: the loss's name. Defaults to `"pkt"`.

    Example:

    ```python
    keras_distill.losses.PKT("embedding", "embedding")
    ```

    Reference:
        Passalis and Tefas, "Learning Deep Representations with
        Probabilistic Knowledge Transfer", ECCV 2018.
    """

    def relation_loss(self, teacher, student, sample_weight=None):
        return pkt(teacher, student, sample_weight)


@keras.saving.register_keras_serializable(package="keras_distill")
class CorrelationCongruence(RelationLoss):
    """Correlation congruence (Peng et al. 2019).

    Matches the Gaussian-kernel correlation matrices of the L2-normalised
    embeddings, or their Taylor approximation (`correlation_congruence`).

    Args:
        gamma: the kernel's width parameter. Defaults to 0.4.
        order: the Taylor order, or `None` for the exact Gaussian kernel.
            Defaults to 2.
        teacher_layer: the teacher layer to read, as in `RelationLoss`.
        student_layer: the student layer to read, as in `RelationLoss`.
        output: the output to read without layers, as in `RelationLoss`.
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
        self,
        gamma=0.4,
        order=2,
        teacher_layer=None,
        student_layer=None,
        output=None,
        name=None,
        **kwargs,
    ):
        super().__init__(teacher_layer, student_layer, output, name, **kwargs)
        if gamma <= 0:
            raise ValueError(f"CorrelationCongruence: `gamma` must be > 0; received {gamma}.")
        if order is not None and (not isinstance(order, int) or order < 0):
            raise ValueError(
                "CorrelationCongruence: `order` must be an int >= 0, or None "
                f"for the exact Gaussian kernel; received {order!r}."
            )
        self.gamma = float(gamma)
        self.order = order

    def relation_loss(self, teacher, student, sample_weight=None):
        return correlation_congruence(
            teacher, student, sample_weight, self.gamma, self.order
        )

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "order": self.order}
