"""Checks of the arguments that build distillers, with errors that say the fix."""

import math
import numbers

import keras

from keras_distill.losses.base import DistillationLoss

#: What a distiller logs besides each distillation loss's value.
LOGGED = (
    "loss", "total_loss", "student_loss", "distillation_loss", "teacher_agreement"
)


def check_model(model, role):
    """Raises unless `model` is a `keras.Model` (built or not).

    A `ValueError`, as `keras.distillation` raises.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"The {role} must be a keras.Model; received an object of type "
            f"{type(model).__name__}. Wrap layers in keras.Sequential or a "
            "Functional model."
        )


def check_built(model, role):
    """Raises unless `model` is built (its weights exist)."""
    if not model.built:
        raise ValueError(
            f"The {role} {model.name!r} is not built, so its weights do not "
            f"exist yet. Build it first: call it on a batch ({role}(x)) or "
            f"call {role}.build(input_shape)."
        )


def check_weight(value, what):
    """Raises unless `value` is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number; received {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0; received {value}.")


def check_augmentation(augmentation):
    """Raises unless `augmentation` is `None`, a layer or a callable."""
    if augmentation is not None and not callable(augmentation):
        raise TypeError(
            "`augmentation` must be a Keras layer or a callable applied to "
            f"each training batch; received {augmentation!r}."
        )


def check_label_loss(loss, student_loss_weight, owner):
    """Raises unless a loss on the labels is given where it has weight."""
    weight = float(student_loss_weight)
    if loss is None and weight > 0:
        raise ValueError(
            f"compile() got no `loss` on the labels, but {owner}'s "
            f"student_loss_weight is {weight}. Pass it, e.g. compile(loss="
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)), "
            f"or build the {owner} with student_loss_weight=0 to train on "
            "the distillation losses alone."
        )


def loss_list(distillation_losses):
    """`distillation_losses` as a checked list, and a distinct log name for each.

    Losses of the same name (two `FeatureDistillation`s, say) are logged as
    Keras names layers: `feature_distillation`, `feature_distillation_1`, ...
    """
    if distillation_losses is None:
        raise ValueError(
            "distillation_losses is None; pass a distillation loss such as "
            "keras_distill.losses.KD(temperature=4.0), or a list of them."
        )
    losses = (
        list(distillation_losses)
        if isinstance(distillation_losses, (list, tuple))
        else [distillation_losses]
    )
    if not losses:
        raise ValueError("distillation_losses is empty; pass at least one loss.")
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            from keras_distill.losses import LOSSES

            raise TypeError(
                f"{loss!r} is not a keras_distill distillation loss. Use one "
                f"of keras_distill.losses ({', '.join(LOSSES)}), or subclass "
                "keras_distill.losses.PerSampleLoss. A Keras loss such as "
                "'mse' goes inside FeatureDistillation(loss='mse'); the "
                "student's own loss goes to compile(loss=...)."
            )
    if len({id(loss) for loss in losses}) != len(losses):
        raise ValueError(
            "The same loss object appears more than once in "
            "distillation_losses; pass one object per term (two "
            "KD(temperature=...) objects for two temperatures)."
        )
    taken = sorted({loss.name for loss in losses} & set(LOGGED))
    if taken:
        raise ValueError(
            f"A distillation loss is named {taken[0]!r}, which the Distiller "
            f"logs already ({', '.join(LOGGED)}); give it another "
            "`name=`, e.g. KD(name='kd_logits')."
        )
    return losses, _distinct_names([loss.name for loss in losses])


def _distinct_names(names):
    """`names`, each repeat given the first free suffix `_1`, `_2`, ..."""
    distinct = []
    for name in names:
        unique, count = name, 0
        while unique in distinct or (unique != name and unique in names):
            count += 1
            unique = f"{name}_{count}"
        distinct.append(unique)
    return distinct


def loss_weights(weights, count, student_loss_weight):
    """One checked weight per loss; `1 - student_loss_weight` by default."""
    if weights is None:
        if student_loss_weight > 1:
            raise ValueError(
                f"student_loss_weight is {student_loss_weight} > 1, so the "
                "default distillation weights (1 - student_loss_weight) would "
                "be negative. Pass distillation_loss_weights explicitly."
            )
        return [1.0 - student_loss_weight] * count
    if isinstance(weights, numbers.Real):
        weights = [weights]
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"Got {len(weights)} distillation_loss_weights for {count} "
            "distillation_losses; give one weight per loss, in the same order."
        )
    for i, weight in enumerate(weights):
        check_weight(weight, f"distillation_loss_weights[{i}]")
    return weights


def in_memory(x):
    """Whether `x` is arrays (or a dict of them), not a dataset or generator."""
    return x is not None and all(hasattr(a, "shape") for a in keras.tree.flatten(x))
