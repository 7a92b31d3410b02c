"""The base class of every distillation loss, and the reduction it shares."""

import math
import numbers
import re

import keras
from keras import ops

from keras_distill._keras_internals import get_keras_mask


def weighted_mean(values, sample_weight=None, mask=None):
    """Averages per-sample loss values the way Keras averages its losses.

    The sum of `values * sample_weight` over valid entries, divided by the
    number of valid entries (Keras's `"sum_over_batch_size"` reduction, with
    masked positions neither counted nor summed).

    Args:
        values: per-sample (or per-position) loss values, shape `(B, ...)`.
        sample_weight: optional weights of shape `(B,)` or any prefix of
            `values.shape`; they broadcast over the trailing axes.
            Defaults to `None` (all ones).
        mask: optional boolean mask of `values.shape`. Defaults to `None`.

    Returns:
        A float32 scalar.
    """
    values = ops.cast(values, "float32")
    if mask is not None:
        mask = ops.cast(mask, "float32")
        values = values * mask
        count = ops.maximum(ops.sum(mask), 1.0)
    else:
        count = ops.cast(ops.size(values), "float32")
    if sample_weight is not None:
        values = values * _broadcast_like(sample_weight, values)
    return ops.sum(values) / count


def combined_weights(values_shape_source, sample_weight=None, mask=None):
    """Folds `sample_weight` and a padding mask into one weight tensor.

    Args:
        values_shape_source: a tensor whose shape the weights must match.
        sample_weight: optional weights broadcastable from the left.
            Defaults to `None`.
        mask: optional boolean mask of the same shape. Defaults to `None`.

    Returns:
        A float32 tensor of `values_shape_source.shape`, or `None` when both
        inputs are `None`.
    """
    weights = None
    if sample_weight is not None:
        weights = _broadcast_like(sample_weight, values_shape_source)
        weights = weights * ops.ones_like(values_shape_source, "float32")
    if mask is not None:
        mask = ops.cast(mask, "float32")
        weights = mask if weights is None else weights * mask
    return weights


def _broadcast_like(weights, values):
    weights = ops.cast(weights, "float32")
    while len(weights.shape) > len(values.shape) and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < len(values.shape):
        weights = ops.expand_dims(weights, axis=-1)
    return weights


def _snake_case(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@keras.saving.register_keras_serializable(package="keras_distill")
class DistillationLoss(keras.layers.Layer):
    """Base class of distillation losses.

    A distillation loss compares what the teacher and the student produce on
    the same batch. It is a `keras.layers.Layer` so that everything it owns
    (a temperature the callbacks schedule, a learned connector) is tracked by
    the `Distiller`, trained by its optimizer where trainable, and saved with
    it. It always computes in float32, whatever the models' dtype policies.

    Subclasses implement `per_sample(teacher, student, labels)`, returning one
    value per sample, or per position for sequence outputs (the outputs'
    shape without the last axis). The base class picks the output to distil,
    applies `sample_weight` and the student's padding mask, and averages like
    a Keras loss. Losses with batch-level terms override `compute_loss`
    instead. A subclass written for `keras.distillation.DistillationLoss`
    (overriding `compute_loss(teacher_outputs, student_outputs, **kwargs)`)
    works unchanged.

    Args:
        output: which output of multi-output models to distil: a dict key or a
            list index. `None` takes the models' only output. Defaults to
            `None`.
        name: the loss's name, also the key of its value in the training
            logs. Defaults to the class name in snake case (`"kd"`).
        **kwargs: other `keras.layers.Layer` arguments.

    Example:

    ```python
    class MeanSquaredLogits(keras_distill.DistillationLoss):
        def per_sample(self, teacher, student, labels=None):
            return keras.ops.mean((teacher - student) ** 2, axis=-1)
    ```
    """

    #: Whether this loss compares class predictions, so that the Distiller can
    #: report the student's top-1 agreement with the teacher on its outputs.
    compares_predictions = False

    #: Whether this loss keeps state that training steps update (a queue of
    #: negatives); the Distiller then passes `training=` to `compute_loss`.
    has_training_state = False

    def __init__(self, output=None, name=None, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(name=name or _snake_case(type(self).__name__), **kwargs)
        if output is not None and not isinstance(output, (str, int)):
            raise TypeError(
                f"`output` must be a dict key (str), a list index (int) or "
                f"None; received {output!r}."
            )
        self.output_key = output
        self.built = True

    def _add_temperature(self, temperature):
        """Creates the non-trainable temperature variable callbacks schedule."""
        check_temperature(temperature, type(self).__name__)
        return self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(float(temperature)),
            trainable=False,
            dtype="float32",
        )

    # -- What a Distiller asks of every loss ---------------------------------

    def select_output(self, outputs):
        """Picks the output this loss distils from a model's outputs.

        Args:
            outputs: a tensor, or a list or dict of tensors.

        Returns:
            One tensor.

        Raises:
            ValueError: when the models have several outputs and `output` was
                not given, or `output` does not name one of them.
        """
        if self.output_key is None:
            flat = keras.tree.flatten(outputs)
            if len(flat) == 1:
                return flat[0]
            names = list(outputs) if isinstance(outputs, dict) else list(
                range(len(flat))
            )
            raise ValueError(
                f"The models have {len(flat)} outputs ({names}); pass "
                f"`output=` to {type(self).__name__} to choose the one to "
                f"distil, e.g. {type(self).__name__}(output={names[0]!r})."
            )
        try:
            if not isinstance(outputs, (dict, list, tuple)):
                raise TypeError("a single tensor has no named outputs")
            return outputs[self.output_key]
        except (KeyError, IndexError, TypeError):
            available = (
                list(outputs)
                if isinstance(outputs, dict)
                else list(range(len(outputs)))
                if isinstance(outputs, (list, tuple))
                else "a single tensor"
            )
            raise ValueError(
                f"{type(self).__name__}(output={self.output_key!r}) names no "
                f"output of the models; available: {available}."
            ) from None

    def prediction_pair(self, teacher_outputs, student_outputs):
        """The (teacher, student) class scores this loss compares, or `None`.

        The Distiller measures top-1 agreement on this pair. Losses that do
        not compare class predictions return `None`.
        """
        if not self.compares_predictions:
            return None
        return (
            self.select_output(teacher_outputs),
            self.select_output(student_outputs),
        )

    def selected_pair(self, teacher_outputs, student_outputs):
        """The output this loss distils, from each model, validated."""
        teacher = self.select_output(teacher_outputs)
        student = self.select_output(student_outputs)
        self.validate_outputs(teacher, student)
        return teacher, student

    def teacher_layers(self):
        """Names of teacher layers whose outputs this loss reads."""
        return ()

    def student_layers(self):
        """Names of student layers whose outputs this loss reads."""
        return ()

    def validate_model_compatibility(self, teacher, student):
        """Checks, before training, that the models suit this loss.

        Called once by the `Distiller`. The default accepts any models.
        """

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Checks that the selected teacher and student tensors suit this loss.

        Called with symbolic tensors when the models are built, and at trace
        time otherwise, so shape errors surface before any training happens.
        The default accepts anything.
        """

    def compute_loss(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        sample_weight=None,
        inputs=None,
    ):
        """Computes the scalar loss for one batch.

        Args:
            teacher_outputs: the teacher's outputs (a tensor or a structure),
                or the features of `teacher_layers()`.
            student_outputs: the student's outputs, in the same form.
            labels: the batch's targets, for losses that use them. Defaults
                to `None`.
            sample_weight: per-sample weights (Keras turns `class_weight`
                into these). Defaults to `None`.
            inputs: the batch's inputs, for losses that read them (such as a
                padding mask given as an input). Defaults to `None`.

        Returns:
            A float32 scalar.
        """
        teacher, student = self.selected_pair(teacher_outputs, student_outputs)
        values = self.per_sample(teacher, student, labels=labels)
        return weighted_mean(values, sample_weight, get_keras_mask(student))

    def per_sample(self, teacher, student, labels=None):
        """Per-sample loss values; implemented by subclasses.

        Args:
            teacher: the teacher tensor, shape `(B, ..., D)`.
            student: the student tensor, shape `(B, ..., D)`.
            labels: the batch's targets, or `None`.

        Returns:
            A tensor of shape `(B, ...)`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `per_sample(teacher, "
            "student, labels=None)` or override `compute_loss`."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.pop("trainable", None)
        config["output"] = self.output_key
        return config


def check_temperature(temperature, owner):
    """Raises a clear error unless `temperature` is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(
        temperature, numbers.Real
    ):
        raise TypeError(
            f"{owner}: `temperature` must be a number, received "
            f"{temperature!r}."
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"{owner}: `temperature` must be a finite number > 0, received "
            f"{temperature}. Typical values are 1 to 10; a temperature of 1 "
            "uses the unsoftened probabilities."
        )
