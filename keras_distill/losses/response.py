"""Response-based distillation: losses on the models' class scores.

Each method is a pure `keras.ops` function and a serializable
`DistillationLoss` class around it. All compute in float32 from
log-probabilities (`log_softmax`), so large logits neither overflow nor
underflow, and scale by T^2 so that gradient magnitudes do not shrink as the
temperature grows (Hinton et al. 2015, section 2).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_distill.losses.base import BatchLoss
from keras_distill.losses.base import PerSampleLoss
from keras_distill.losses.base import combined_weights
from keras_distill.losses.base import warn_at_user_line
from keras_distill.losses.base import weighted_mean
from keras_distill.labels import UNLABELLED

DIVERGENCES = ("forward", "reverse", "js")
# The smallest normal float32: a student's probabilities are floored here
# before the logarithm, so that its gradient stays finite.
_TINY = 1.1754944e-38


def soft_log_probabilities(scores, temperature=1.0, from_logits=True):
    """Temperature-softened log-probabilities, in float32.

    Args:
        scores: logits, or probabilities when `from_logits=False`, with the
            classes on the last axis.
        temperature: the softmax temperature T > 0. Defaults to 1.
        from_logits: whether `scores` are logits. Probabilities (from a
            black-box teacher, say) are softened as `p^(1/T)` renormalised,
            which is what `softmax(logits / T)` gives for any logits of `p`;
            a probability of 0 stays 0 at every temperature. Defaults to
            `True`.

    Returns:
        `log_softmax(scores / T)`, of the shape of `scores`.
    """
    scores = ops.cast(scores, "float32")
    if not from_logits:
        scores = ops.log(scores)
    return ops.log_softmax(scores / temperature, axis=-1)


def standardize_logits(logits, epsilon=1e-7):
    """Z-scored logits: each sample's logits minus their mean, over their
    standard deviation (logit standardization, Sun et al. 2024).

    Softmax at temperature T of the z-scores is softmax of the logits at a
    per-sample temperature `T * std`: the student matches the teacher's
    logit relations without having to match their range. The standard
    deviation is the sample one (divided by C - 1), as in the paper's code,
    and `epsilon` is added to it, so constant logits give zeros (with a
    finite gradient).

    Args:
        logits: shape `(B, ..., C)`, at least 2 classes.
        epsilon: added to the standard deviation. Defaults to `1e-7`.

    Returns:
        float32 z-scores of the shape of `logits`.

    Reference:
        Sun, Ren, Li, Wang and Cao, "Logit Standardization in Knowledge
        Distillation", CVPR 2024.
    """
    logits = ops.cast(logits, "float32")
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    classes = logits.shape[-1]
    variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (classes - 1)
    # Floored below the square root, whose gradient at 0 is infinite: the
    # floor's standard deviation (1e-15) is lost against `epsilon`.
    return centred / (epsilon + ops.sqrt(ops.maximum(variance, 1e-30)))


def _standardized(standardize, *logits):
    return [standardize_logits(x) for x in logits] if standardize else list(logits)


def _kl(log_p, log_q):
    """KL(p || q) over the last axis, with 0 log 0 = 0 (NaN stays NaN)."""
    p = ops.exp(log_p)
    return ops.sum(ops.where(p == 0, 0.0, p * (log_p - log_q)), axis=-1)


def _reverse_kl_on_support(log_p, log_q):
    """KL(q_S || p), q_S the student renormalised on the teacher's support.

    Where the teacher gives a class probability 0 (a top-k teacher's
    dropped classes, a black-box teacher's zeros), KL(q || p) is infinite
    for any student with mass there; it is taken over the classes the
    teacher supports instead. Both logarithms are made finite off the
    support, so that no gradient there is NaN.
    """
    support = ops.not_equal(log_p, -math.inf)  # NaN stays in, and stays NaN
    log_q_s = ops.log_softmax(ops.where(support, log_q, -math.inf), axis=-1)
    q_s = ops.exp(log_q_s)
    difference = ops.where(support, log_q_s, 0.0) - ops.where(support, log_p, 0.0)
    return ops.sum(q_s * difference, axis=-1)


def kd(
    teacher_logits,
    student_logits,
    temperature=4.0,
    divergence="forward",
    teacher_from_logits=True,
    student_from_logits=True,
    standardize=False,
):
    """Knowledge-distillation divergence per sample (Hinton et al. 2015).

    With p = softmax(teacher / T) and q = softmax(student / T):

    - `"forward"`: T^2 KL(p || q), Hinton's soft-target loss. At T = 1 it is
      the soft-target cross-entropy minus the teacher's entropy, which does
      not depend on the student, so the gradients are the same.
    - `"reverse"`: T^2 KL(q || p), mode-seeking; MiniLLM (Gu et al. 2024)
      argues for it when a small generative student cannot cover every mode
      of its teacher. Where the teacher gives classes a probability of 0
      (a top-k `Precomputed` teacher), it is taken over the classes the
      teacher supports, the student's probabilities renormalised there.
    - `"js"`: T^2 JS(p, q) = T^2 (KL(p || m) + KL(q || m)) / 2 with
      m = (p + q) / 2; symmetric and bounded by T^2 log 2.

    Args:
        teacher_logits: teacher scores, shape `(B, ..., C)`.
        student_logits: student scores, shape `(B, ..., C)`.
        temperature: softmax temperature T > 0. Defaults to 4, as `KD`.
        divergence: `"forward"`, `"reverse"` or `"js"`. Defaults to
            `"forward"`.
        teacher_from_logits: `False` when the teacher gives probabilities.
            Defaults to `True`.
        student_from_logits: `False` when the student ends in a softmax
            (its probabilities are floored at the smallest normal float32
            before the logarithm). Defaults to `True`.
        standardize: whether both models' logits are z-scored first
            (`standardize_logits`, Sun et al. 2024); needs logits on both
            sides. Defaults to `False`.

    Returns:
        A float32 tensor of shape `(B, ...)`.

    Reference:
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", 2015.
    """
    check_divergence(divergence)
    teacher_logits, student_logits = _standardized(standardize, teacher_logits, student_logits)
    if not student_from_logits:
        student_logits = ops.maximum(ops.cast(student_logits, "float32"), _TINY)
    log_p = soft_log_probabilities(teacher_logits, temperature, teacher_from_logits)
    log_q = soft_log_probabilities(student_logits, temperature, student_from_logits)
    if divergence == "forward":
        value = _kl(log_p, log_q)
    elif divergence == "reverse":
        value = _reverse_kl_on_support(log_p, log_q)
    else:
        log_m = ops.logaddexp(log_p, log_q) - math.log(2.0)
        value = 0.5 * (_kl(log_p, log_m) + _kl(log_q, log_m))
    return value * ops.square(temperature)


def dkd(
    teacher_logits,
    student_logits,
    labels,
    alpha=1.0,
    beta=8.0,
    temperature=4.0,
    standardize=False,
):
    """Decoupled knowledge distillation per sample (Zhao et al. 2022).

    Splits KD into target-class KD (TCKD: KL between the binary
    target/non-target distributions) and non-target-class KD (NCKD: KL between
    the distributions over the non-target classes alone), and weighs them
    independently: `T^2 (alpha TCKD + beta NCKD)`. Classic KD is
    `TCKD + (1 - p_target) NCKD`.

    Args:
        teacher_logits: teacher logits, shape `(B, ..., C)`.
        student_logits: student logits, shape `(B, ..., C)`.
        labels: the true classes, as integer indices of shape `(B, ...)` or
            `(B, ..., 1)`, or as one-hot / probability rows `(B, ..., C)`.
            A sample labelled `keras_distill.UNLABELLED` (-1) takes the
            teacher's top class as its target.
        alpha: weight of TCKD. Defaults to 1.
        beta: weight of NCKD. Defaults to 8 (the paper's CIFAR-100 value).
        temperature: softmax temperature. Defaults to 4.
        standardize: whether both models' logits are z-scored first
            (`standardize_logits`). Defaults to `False`.

    Returns:
        A float32 tensor of shape `(B, ...)`.

    Reference:
        Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation",
        CVPR 2022.
    """
    teacher_logits, student_logits = _standardized(standardize, teacher_logits, student_logits)
    t = ops.cast(temperature, "float32")
    num_classes = student_logits.shape[-1]
    target = _one_hot_targets(labels, teacher_logits)
    log_p_t = soft_log_probabilities(teacher_logits, t)
    log_p_s = soft_log_probabilities(student_logits, t)

    # The target class is left out at -inf, not at a large negative number,
    # which logits of that size would reach: exp(-inf) is exactly 0.
    def binary(log_p):
        log_target = ops.sum(ops.where(target > 0, log_p, 0.0), axis=-1)
        log_other = ops.logsumexp(ops.where(target > 0, -math.inf, log_p), axis=-1)
        return ops.stack([log_target, log_other], axis=-1)

    tckd = _kl(binary(log_p_t), binary(log_p_s))
    # Dropping the target logit and renormalising gives the non-target
    # distribution; the log-probabilities computed above share that shift.
    nckd = _kl(
        ops.log_softmax(ops.where(target > 0, -math.inf, log_p_t), -1),
        ops.log_softmax(ops.where(target > 0, -math.inf, log_p_s), -1),
    )
    return ops.square(t) * (alpha * tckd + beta * nckd)


def _one_hot_targets(labels, teacher_logits):
    """The target classes of `labels` as one-hot rows; an `UNLABELLED`
    sample's target is the teacher's top class."""
    if labels is None:
        raise ValueError(
            "DKD needs the true labels: pass `y` to `fit` (DKD separates the "
            "target class from the others)."
        )
    num_classes, logits_rank = teacher_logits.shape[-1], len(teacher_logits.shape)
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == logits_rank and labels.shape[-1] == num_classes:
        if num_classes != 1:
            labels = ops.argmax(labels, axis=-1)
    if len(labels.shape) == logits_rank:
        labels = ops.squeeze(labels, axis=-1)
    labels = ops.cast(labels, "int32")
    top = ops.cast(ops.argmax(teacher_logits, -1), "int32")
    labels = ops.where(labels >= 0, labels, top)
    return ops.one_hot(labels, num_classes, dtype="float32")


def _pearson(x, y, weights, axis):
    """Weighted Pearson correlation of `x` and `y` along `axis`."""
    total = ops.maximum(ops.sum(weights, axis=axis, keepdims=True), 1e-30)

    def centre(v):  # 0 / 0 spared where every weight is 0: the result is 0
        return v - ops.sum(v * weights, axis=axis, keepdims=True) / total

    x, y = centre(x), centre(y)
    covariance = ops.sum(weights * x * y, axis=axis)
    # Clip before the square root: its gradient at 0 is infinite, and a
    # constant row or column (a dead student unit) must not make it NaN.
    scale = ops.sqrt(
        ops.maximum(
            ops.sum(weights * x * x, axis=axis) * ops.sum(weights * y * y, axis=axis),
            1e-16,
        )
    )
    return covariance / scale


def dist(
    teacher_logits,
    student_logits,
    beta=1.0,
    gamma=1.0,
    temperature=1.0,
    sample_weight=None,
    mask=None,
    standardize=False,
):
    """DIST: distillation from a stronger teacher (Huang et al. 2022).

    Matches relations rather than exact probabilities. With
    p = softmax(teacher / T) and q = softmax(student / T):

    - inter-class: `1 - pearson(q_i, p_i)` over the classes of each sample i,
      averaged over samples;
    - intra-class: `1 - pearson(q[:, c], p[:, c])` over the samples of the
      batch for each class c, averaged over classes.

    The loss is `T^2 (beta inter + gamma intra)`. The intra-class term is a
    property of the whole batch: `sample_weight` weighs each sample in the
    class-wise correlations (a zero weight removes it), and padded positions
    (`mask` False) take no part in either term; a batch whose weights are
    all 0 (or whose positions are all masked) gives 0, with a zero gradient.

    Args:
        teacher_logits: teacher logits, shape `(B, ..., C)`.
        student_logits: student logits, shape `(B, ..., C)`.
        beta: weight of the inter-class term. Defaults to 1.
        gamma: weight of the intra-class term. Defaults to 1.
        temperature: softmax temperature. Defaults to 1.
        sample_weight: optional weights of shape `(B,)` or `(B, ...)`.
            Defaults to `None`.
        mask: optional boolean mask of shape `(B, ...)`. Defaults to `None`.
        standardize: whether both models' logits are z-scored first
            (`standardize_logits`). Defaults to `False`.

    Returns:
        A float32 scalar.

    Reference:
        Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A
        Stronger Teacher", NeurIPS 2022.
    """
    teacher_logits, student_logits = _standardized(standardize, teacher_logits, student_logits)
    t = ops.cast(temperature, "float32")
    num_classes = student_logits.shape[-1]
    p = ops.exp(soft_log_probabilities(teacher_logits, t))
    q = ops.exp(soft_log_probabilities(student_logits, t))
    inter = weighted_mean(
        1.0 - _pearson(q, p, ops.ones_like(p), axis=-1), sample_weight, mask
    )
    weights = combined_weights(p[..., 0], sample_weight, mask)
    if weights is None:
        weights = ops.ones_like(p[..., 0])
    # A batch without a sample of nonzero weight has no intra-class term.
    any_sample = ops.cast(ops.any(ops.not_equal(weights, 0.0)), "float32")
    intra = any_sample * (1.0 - ops.mean(
        _pearson(
            ops.reshape(q, (-1, num_classes)),
            ops.reshape(p, (-1, num_classes)),
            ops.reshape(weights, (-1, 1)),
            axis=0,
        )
    ))
    return ops.square(t) * (beta * inter + gamma * intra)


def check_divergence(divergence):
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"Unknown divergence {divergence!r}; use one of {DIVERGENCES}."
        )


class _ComparesClassScores:
    """Mixin of the losses on class scores: same class count on both sides,
    and scores of the kind (logits or probabilities) the loss expects."""

    compares_predictions = True

    standardize = False

    def validate_outputs(self, teacher_outputs, student_outputs):
        check_class_counts(self, teacher_outputs, student_outputs)
        if self.standardize and student_outputs.shape[-1] == 1:
            raise ValueError(
                f"{type(self).__name__}(standardize=True) z-scores each sample's "
                "logits over its classes, and the models score 1 class. Leave "
                "standardize=False for a single score."
            )

    def check_values(self, teacher, student, labels=None):
        for role, values in (("teacher", teacher), ("student", student)):
            check_scores(self, values, role, getattr(self, f"{role}_from_logits", True))


@keras.saving.register_keras_serializable(package="keras_distill")
class KD(_ComparesClassScores, PerSampleLoss):
    """Hinton knowledge distillation on softened class probabilities.

    `T^2 KL(softmax(teacher / T) || softmax(student / T))` per sample (or the
    reverse KL or Jensen-Shannon divergence), averaged with `sample_weight`
    and padding masks. See `keras_distill.losses.kd` for the formulas.

    Args:
        teacher: the teacher's class scores: `None` (its output) or a source
            (`keras_distill.sources`). Defaults to `None`.
        student: the student's class scores. Defaults to `None`.
        temperature: softmax temperature T > 0, held in a non-trainable
            variable that `TemperatureScheduler` can change. Defaults to 4.
        divergence: `"forward"` (Hinton), `"reverse"` (mode-seeking) or
            `"js"`. Defaults to `"forward"`.
        teacher_from_logits: `False` for a teacher that gives probabilities
            (a black-box API). Defaults to `True`.
        student_from_logits: `False` for a student ending in a softmax.
            Defaults to `True`.
        standardize: whether both models' logits are z-scored before the
            temperature (logit standardization, Sun et al. 2024; see
            `keras_distill.losses.standardize_logits`). The z-scores have
            unit spread: the paper's code runs it at `temperature=2` with
            a distillation weight of 9 against 1 for the labels (0.9 and
            0.1 here). Defaults to `False`.
        input_mask: the key of a dict input holding a padding mask. Defaults
            to `None`: the student output's Keras mask, if any.
        name: the loss's name in the logs. Defaults to `"kd"`.

    Example:

    ```python
    distiller = keras_distill.Distiller(
        teacher, student, keras_distill.losses.KD(temperature=4.0)
    )
    ```

    Reference:
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", 2015.
    """

    def __init__(
        self,
        teacher=None,
        student=None,
        *,
        temperature=4.0,
        divergence="forward",
        teacher_from_logits=True,
        student_from_logits=True,
        standardize=False,
        input_mask=None,
        name=None,
        **kwargs,
    ):
        super().__init__(teacher, student, input_mask=input_mask, name=name, **kwargs)
        check_divergence(divergence)
        if standardize and not (teacher_from_logits and student_from_logits):
            raise ValueError(
                "KD(standardize=True) z-scores logits, and "
                f"teacher_from_logits={teacher_from_logits}, "
                f"student_from_logits={student_from_logits} say that a model "
                "gives probabilities. Standardize logits only (drop the "
                "model's final softmax), or leave standardize=False."
            )
        self._add_temperature(temperature)
        self.divergence = divergence
        self.teacher_from_logits = teacher_from_logits
        self.student_from_logits = student_from_logits
        self.standardize = bool(standardize)

    def per_sample(self, context):
        return kd(
            context.teacher,
            context.student,
            self.temperature_variable,
            self.divergence,
            self.teacher_from_logits,
            self.student_from_logits,
            self.standardize,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "divergence": self.divergence,
            "teacher_from_logits": self.teacher_from_logits,
            "student_from_logits": self.student_from_logits,
            "standardize": self.standardize,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class DKD(_ComparesClassScores, PerSampleLoss):
    """Decoupled knowledge distillation (target and non-target parts).

    `T^2 (alpha TCKD + beta NCKD)` per sample; needs the true labels. The
    paper warms the loss up linearly over the first epochs: schedule this
    loss's weight with `keras_distill.callbacks.LossWeightScheduler`.

    Args:
        teacher: the teacher's class scores, as in `KD`. Defaults to `None`.
        student: the student's class scores. Defaults to `None`.
        alpha: weight of target-class KD. Defaults to 1.
        beta: weight of non-target-class KD. Defaults to 8.
        temperature: softmax temperature, schedulable. Defaults to 4.
        standardize: whether both models' logits are z-scored first, as
            in `KD`. Defaults to `False`.
        input_mask: as in `KD`. Defaults to `None`.
        name: the loss's name in the logs. Defaults to `"dkd"`.

    Example:

    ```python
    dkd = keras_distill.losses.DKD(alpha=1.0, beta=8.0, temperature=4.0)
    warm_up = keras_distill.callbacks.LossWeightScheduler(
        lambda epoch: min(1.0, (epoch + 1) / 20), loss="dkd"
    )
    ```

    Reference:
        Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.
    """

    def __init__(
        self, teacher=None, student=None, *, alpha=1.0, beta=8.0, temperature=4.0,
        standardize=False, input_mask=None, name=None, **kwargs
    ):
        super().__init__(teacher, student, input_mask=input_mask, name=name, **kwargs)
        check_non_negative(self, alpha=alpha, beta=beta)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.standardize = bool(standardize)
        self._add_temperature(temperature)

    def per_sample(self, context):
        return dkd(
            context.teacher, context.student, context.labels, self.alpha,
            self.beta, self.temperature_variable, self.standardize,
        )

    def check_values(self, teacher, student, labels=None):
        super().check_values(teacher, student, labels)
        check_labels(self, labels, teacher.shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "standardize": self.standardize,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class DIST(_ComparesClassScores, BatchLoss):
    """DIST: inter- and intra-class Pearson correlation matching.

    Relaxes exact probability matching to matching the teacher's relations,
    which helps when the teacher is much stronger than the student. The
    intra-class term correlates each class's scores over the batch, so the
    loss is a property of the whole batch. See `keras_distill.losses.dist`.

    Args:
        teacher: the teacher's class scores, as in `KD`. Defaults to `None`.
        student: the student's class scores. Defaults to `None`.
        beta: weight of the inter-class term. Defaults to 1.
        gamma: weight of the intra-class term. Defaults to 1.
        temperature: softmax temperature, schedulable. Defaults to 1.
        standardize: whether both models' logits are z-scored first, as
            in `KD`. Defaults to `False`.
        input_mask: as in `KD`. Defaults to `None`.
        name: the loss's name in the logs. Defaults to `"dist"`.

    Reference:
        Huang et al., "Knowledge Distillation from A Stronger Teacher",
        NeurIPS 2022.
    """

    def __init__(
        self, teacher=None, student=None, *, beta=1.0, gamma=1.0, temperature=1.0,
        standardize=False, input_mask=None, name=None, **kwargs
    ):
        super().__init__(teacher, student, input_mask=input_mask, name=name, **kwargs)
        check_non_negative(self, beta=beta, gamma=gamma)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.standardize = bool(standardize)
        self._add_temperature(temperature)
        self._warned_two_classes = False

    def validate_outputs(self, teacher_outputs, student_outputs):
        super().validate_outputs(teacher_outputs, student_outputs)
        if student_outputs.shape[-1] == 2 and self.beta and not self._warned_two_classes:
            self._warned_two_classes = True
            warn_at_user_line(
                "DIST: the models score 2 classes, and the Pearson correlation "
                "of two scores is +1 or -1 whatever they are, so the "
                "inter-class term (beta) gives no gradient and only the "
                "intra-class term, blind to a shift of the student's "
                "scores, teaches. On a binary task prefer KD, or DIST(beta=0) "
                "with the labels' loss weighted up."
            )

    def compute(self, context):
        return dist(
            context.teacher,
            context.student,
            self.beta,
            self.gamma,
            self.temperature_variable,
            context.sample_weight,
            context.mask,
            self.standardize,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "gamma": self.gamma,
            "temperature": self.temperature,
            "standardize": self.standardize,
        }


def _looks_like_probabilities(values):
    """Whether every row of `values` lies in [0, 1] and sums to 1."""
    return bool(
        values.size
        and np.all((values >= 0) & (values <= 1))
        and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3)
    )


def check_scores(loss, values, role, from_logits=True):
    """Warns or raises when class scores are not of the kind `loss` expects.

    Args:
        loss: the loss, for the messages.
        values: the `role` model's scores on a few samples, a NumPy array
            `(..., C)`.
        role: `"teacher"` or `"student"`.
        from_logits: whether `loss` reads them as logits.

    Raises:
        ValueError: when probabilities are expected and `values` are not.
    """
    values = np.asarray(values, "float64")
    owner = type(loss).__name__
    if from_logits and _looks_like_probabilities(values):
        warn_at_user_line(
            f"{owner}: the {role}'s outputs look like probabilities (every row "
            "in [0, 1], summing to 1), but they are read as logits, and "
            "softening probabilities as logits gives a near-uniform target. "
            f"Pass {role}_from_logits=False to read them as probabilities "
            "(KD takes it), or let the model end without a softmax."
        )
    if not from_logits and not _looks_like_probabilities(values):
        finite = values[np.isfinite(values)]
        raise ValueError(
            f"{owner}({role}_from_logits=False) reads the {role}'s outputs as "
            "probabilities, but they are not: they range over "
            f"[{finite.min() if finite.size else np.nan:.3g}, "
            f"{finite.max() if finite.size else np.nan:.3g}] and their rows do "
            f"not all sum to 1. For logits, pass {role}_from_logits=True."
        )


def check_labels(loss, labels, num_classes):
    """Raises when integer class labels fall outside `[0, num_classes)`."""
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.ndim and labels.shape[-1] == num_classes and labels.ndim > 1:
        return  # one-hot (or soft) labels
    labels = labels[labels != UNLABELLED] if labels.dtype.kind in "iu" else labels
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{type(loss).__name__} reads class labels in [0, {num_classes}), "
            f"the models' {num_classes} classes, but the labels range over "
            f"[{labels.min()}, {labels.max()}]. Map them to 0, 1, ..., "
            f"{num_classes - 1} (e.g. with numpy.unique(y, "
            "return_inverse=True))."
        )


def check_non_negative(loss, **weights):
    """Raises unless every named weight of `loss` is a number >= 0."""
    for name, value in weights.items():
        if not value >= 0:
            raise ValueError(
                f"{type(loss).__name__}: `{name}` weighs a term of the loss and "
                f"must be >= 0 (0 turns the term off); received {value}."
            )


def check_class_counts(loss, teacher, student):
    """Raises a clear error when teacher and student score different classes."""
    t_classes, s_classes = teacher.shape[-1], student.shape[-1]
    if t_classes is not None and s_classes is not None and t_classes != s_classes:
        raise ValueError(
            f"{type(loss).__name__} compares class scores, but the teacher "
            f"gives {t_classes} per sample (shape {tuple(teacher.shape)}) and "
            f"the student {s_classes} (shape {tuple(student.shape)}). Give "
            f"the student an output layer with {t_classes} units, or pick "
            "matching tensors with `teacher=` and `student=` (e.g. "
            "keras_distill.sources.Output('logits'))."
        )
