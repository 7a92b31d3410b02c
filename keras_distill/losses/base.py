"""The bases of every distillation loss, what they read, and how they reduce.

A loss says which tensors it compares with its first two arguments,
`teacher=` and `student=` (see `keras_distill.sources`); its
hyperparameters are keyword arguments. On each step it gets one
`LossContext` per (teacher, student) pair of tensors and returns a scalar:

- `PerSampleLoss` subclasses return one value per sample (or per position)
  from `per_sample(context)`; the base reduces them as a `keras.losses.Loss`
  with `"sum_over_batch_size"` does, with the sample weights and the padding
  mask.
- `BatchLoss` subclasses compare the batch as a whole (relations between
  samples, correlations over the batch, contrastive queues) in
  `compute(context)`, and apply the weights and mask themselves.
"""

import functools
import inspect
import math
import os
import numbers
import re
import warnings
from typing import NamedTuple

import keras
from keras import ops

from keras_distill import sources as sources_module
from keras_distill._keras_internals import get_keras_mask
from keras_distill.scalars import Scalar


class LossContext(NamedTuple):
    """Everything a distillation loss may read on one step, for one pair.

    Attributes:
        teacher: the teacher's tensor this loss compares (what its
            `teacher=` source read), without gradient.
        student: the student's matching tensor.
        labels: the batch's targets, or `None`.
        sample_weight: per-sample weights (`class_weight` arrives here), or
            `None`.
        mask: the padding mask of the student's tensor (its Keras mask, or
            the input named by the loss's `input_mask`), or `None`.
        inputs: the batch's inputs, as the teacher saw them.
        training: whether this is a training step (stateful losses update
            their state only then).
        pair: the index of this (teacher, student) pair among the loss's
            sources.
    """

    teacher: object
    student: object
    labels: object = None
    sample_weight: object = None
    mask: object = None
    inputs: object = None
    training: bool = False
    pair: int = 0


def weighted_mean(values, sample_weight=None, mask=None):
    """Averages per-sample loss values the way Keras averages its losses.

    The sum of `values * sample_weight` over valid entries, divided by the
    number of valid entries: `keras.losses.Loss`'s `"sum_over_batch_size"`
    reduction, with masked positions neither counted nor summed (and 0 when
    no entry is valid).

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
    if mask is None and sample_weight is None:
        return ops.mean(values)
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


# Old argument names, kept for one release, and the role each names.
_DEPRECATED = {
    "teacher_layer": "teacher",
    "teacher_layers": "teacher",
    "student_layer": "student",
    "student_layers": "student",
}


def warn_at_user_line(message, category=UserWarning):
    """A warning that points at the first line outside keras-distill."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level = 1
    for frame in inspect.stack()[1:]:
        level += 1
        if not os.path.abspath(frame.filename).startswith(package):
            break
    warnings.warn(message, category, stacklevel=level)


def _deprecated_sources(owner, kwargs, teacher, student):
    """`teacher` and `student`, from the deprecated arguments in `kwargs`."""
    given = {"teacher": teacher, "student": student}
    for old, role in _DEPRECATED.items():
        if old in kwargs:
            value = kwargs.pop(old)
            warn_at_user_line(
                f"{owner}({old}=...) is deprecated; pass {role}=... (the "
                f"{'first' if role == 'teacher' else 'second'} argument of "
                "every loss).",
                DeprecationWarning,
            )
            if value is not None:
                given[role] = value
    if "output" in kwargs:
        key = kwargs.pop("output")
        warn_at_user_line(
            f"{owner}(output={key!r}) is deprecated; pass teacher=Output("
            f"{key!r}), student=Output({key!r}) (from keras_distill.sources).",
            DeprecationWarning,
        )
        if key is not None:
            for role in given:
                if given[role] is None:
                    given[role] = sources_module.Output(key)
    return given["teacher"], given["student"]


@keras.saving.register_keras_serializable(package="keras_distill")
class DistillationLoss(keras.layers.Layer):
    """Base class of distillation losses.

    A distillation loss compares what the teacher and the student produce on
    the same batch. It is a `keras.layers.Layer` so that everything it owns
    (a temperature the callbacks schedule, a learned connector) is tracked by
    the `Distiller`, trained by its optimizer where trainable, and saved with
    it. It always computes in float32, whatever the models' dtype policies.

    Subclass `PerSampleLoss` (one value per sample, reduced for you) or
    `BatchLoss` (a value for the whole batch) rather than this class. A
    subclass written for `keras.distillation.DistillationLoss`, overriding
    `compute_loss(teacher_outputs, student_outputs, **kwargs)`, also works:
    it receives the tensors its sources read.

    Args:
        teacher: what the loss reads of the teacher: `None` (its output), a
            layer path, a `keras_distill.sources.Source`, or a list of them
            (one per pair). Defaults to `None`.
        student: the same for the student, one per teacher source.
            Defaults to `None`.
        input_mask: the key of a dict input holding a boolean mask of real
            (not padded) positions, shape `(B, T)`, for models that take
            their padding mask as an input (keras-hub's `"padding_mask"`).
            Defaults to `None`: the student tensor's own Keras mask, if any.
        name: the loss's name, also the key of its value in the training
            logs. Defaults to the class name in snake case (`"kd"`).
        **kwargs: other `keras.layers.Layer` arguments.

    Example:

    ```python
    class MeanSquaredLogits(keras_distill.losses.PerSampleLoss):
        def per_sample(self, context):
            return keras.ops.mean((context.teacher - context.student) ** 2, -1)
    ```
    """

    #: Whether this loss compares class predictions, so that the Distiller can
    #: report the student's top-1 agreement with the teacher on its outputs.
    compares_predictions = False

    def __init__(self, teacher=None, student=None, *, input_mask=None, name=None,
                 **kwargs):
        owner = type(self).__name__
        teacher, student = _deprecated_sources(owner, kwargs, teacher, student)
        kwargs["dtype"] = "float32"
        super().__init__(name=name or _snake_case(owner), **kwargs)
        self.teacher_sources = sources_module.get_list(teacher, "teacher", owner)
        self.student_sources = sources_module.get_list(student, "student", owner)
        if len(self.teacher_sources) != len(self.student_sources):
            raise ValueError(
                f"{owner} pairs teacher and student tensors one to one; got "
                f"{len(self.teacher_sources)} teacher sources and "
                f"{len(self.student_sources)} student sources."
            )
        if input_mask is not None and not isinstance(input_mask, str):
            raise TypeError(
                f"{owner}: `input_mask` is the key of a dict input holding the "
                f"padding mask; received {input_mask!r}."
            )
        self.input_mask = input_mask
        self._temperature = None
        self._build_shapes = None
        self.built = True
        if hasattr(self, "_pending_temperature"):  # set before this __init__ ran
            self._add_temperature(self._pending_temperature)
            del self._pending_temperature

    def __init_subclass__(cls, **kwargs):
        """Lets a subclass's `__init__` skip `super().__init__()`.

        A subclass written for `keras.distillation.DistillationLoss`, whose
        base has no `__init__` to call, may not call it; its loss then
        compares the models' outputs, under its class name.
        """
        super().__init_subclass__(**kwargs)
        if not getattr(cls.__init__, "completes_base_init", False):
            cls.__init__ = _completing_base_init(cls.__init__)

    def _add_temperature(self, temperature):
        """Creates the non-trainable temperature variable callbacks schedule."""
        check_temperature(temperature, type(self).__name__)
        self._temperature = Scalar(self, "temperature", temperature)

    @property
    def temperature(self):
        """The softmax temperature, a float; settable.

        Inside `compute`, read `temperature_variable` instead: a number is
        a constant in a compiled step, and would not follow a schedule.
        """
        scalar = getattr(self, "_temperature", None)
        if scalar is not None:
            return scalar.number
        if hasattr(self, "_pending_temperature"):
            return self._pending_temperature
        raise AttributeError(f"{type(self).__name__} has no temperature.")

    @temperature.setter
    def temperature(self, value):
        scalar = getattr(self, "_temperature", None)
        if scalar is not None:
            check_temperature(value, type(self).__name__)
            scalar.assign(value)
        elif hasattr(self, "teacher_sources"):
            self._add_temperature(value)
        else:  # a subclass's __init__, before the base's: kept for it
            check_temperature(value, type(self).__name__)
            self._pending_temperature = value

    @property
    def temperature_variable(self):
        """The variable that holds the temperature, for `compute` to read
        (and `keras_distill.callbacks.TemperatureScheduler` to set)."""
        if getattr(self, "_temperature", None) is None:
            raise AttributeError(f"{type(self).__name__} has no temperature.")
        return self._temperature.variable

    def schedulable_variables(self):
        """The variables callbacks may schedule, by name.

        Returns:
            `{"temperature": variable}` for a loss with a temperature
            (`keras_distill.callbacks.TemperatureScheduler` sets it), else
            `{}`.
        """
        if getattr(self, "_temperature", None) is None:
            return {}
        return {"temperature": self._temperature.variable}

    # -- What a Distiller asks of every loss ---------------------------------

    def updates_per_epoch(self):
        """Whether `begin_epoch` changes this loss (a curriculum, say)."""
        return False

    def begin_epoch(self, epoch):
        """Called by the Distiller before each epoch; the default does nothing.

        Args:
            epoch: the epoch about to start, counted from 0.
        """

    def tap_paths(self, role):
        """The layer paths of the `role` model ("teacher" or "student") that
        this loss reads."""
        found = self.teacher_sources if role == "teacher" else self.student_sources
        return tuple(path for source in found for path in source.tap_paths())

    def reads_predictions(self):
        """Whether this loss compares class scores of the models' outputs,
        on which the Distiller measures top-1 agreement."""
        return self.compares_predictions and all(
            s.reads_outputs() for s in self.teacher_sources + self.student_sources
        )

    def read(self, teacher_pass, student_pass):
        """The (teacher, student) tensors of each pair, from two `ForwardPass`es."""
        return [
            (t.read(teacher_pass), s.read(student_pass))
            for t, s in zip(self.teacher_sources, self.student_sources)
        ]

    def prediction_pair(self, teacher_pass, student_pass):
        """The (teacher, student) class scores top-1 agreement compares."""
        return self.read(teacher_pass, student_pass)[0]

    def from_passes(self, teacher_pass, student_pass, labels=None,
                    sample_weight=None, inputs=None, training=False):
        """The loss of one step: the sum of `compute` over the pairs.

        Args:
            teacher_pass: the teacher's `ForwardPass` on the batch.
            student_pass: the student's `ForwardPass` on the batch.
            labels: the batch's targets. Defaults to `None`.
            sample_weight: per-sample weights. Defaults to `None`.
            inputs: the batch's inputs. Defaults to `None`.
            training: whether this is a training step. Defaults to `False`.

        Returns:
            A float32 scalar.
        """
        return self._total(
            self.read(teacher_pass, student_pass), labels, sample_weight, None,
            inputs, training,
        )

    def _total(self, pairs, labels, sample_weight, mask, inputs, training):
        """The sum of `compute` over the (teacher, student) `pairs`."""
        total = None
        for pair, (teacher, student) in enumerate(pairs):
            value = self._checked(LossContext(
                teacher, student, labels, sample_weight,
                mask if mask is not None else self.padding_mask(student, inputs),
                inputs, training, pair,
            ))
            total = value if total is None else total + value
        return total

    def _checked(self, context):
        self.validate_outputs(context.teacher, context.student)
        value = ops.cast(self.compute(context), "float32")
        if len(value.shape) != 0:
            raise ValueError(
                f"{type(self).__name__} returned a loss of shape "
                f"{tuple(value.shape)}; a distillation loss must return a "
                "scalar (reduce it, e.g. with keras.ops.mean)."
            )
        return value

    def padding_mask(self, student, inputs):
        """The padding mask of `student`: the `input_mask` input, or its own."""
        if self.input_mask is None:
            return get_keras_mask(student) if not isinstance(student, dict) else None
        if not isinstance(inputs, dict) or self.input_mask not in inputs:
            available = list(inputs) if isinstance(inputs, dict) else "not a dict"
            raise ValueError(
                f"{type(self).__name__}(input_mask={self.input_mask!r}) reads "
                f"the padding mask from the inputs, but the inputs have no "
                f"such key (keys: {available})."
            )
        return inputs[self.input_mask]

    def compute(self, context):
        """The loss of one pair, a float32 scalar; implemented by subclasses.

        Args:
            context: a `LossContext`.

        Returns:
            A scalar tensor.
        """
        if type(self).compute_loss is DistillationLoss.compute_loss:
            raise NotImplementedError(
                f"{type(self).__name__} must implement `compute(context)` (or "
                "subclass PerSampleLoss and implement `per_sample(context)`)."
            )
        return self.compute_loss(
            context.teacher, context.student, **_accepted(self.compute_loss, context)
        )

    def compute_loss(self, teacher_outputs, student_outputs, labels=None,
                     sample_weight=None, mask=None, inputs=None, training=False):
        """The loss of tensors given directly: `keras.distillation`'s entry.

        Args:
            teacher_outputs: the teacher tensor this loss compares (what its
                `teacher=` source reads), or a list of them, one per pair.
            student_outputs: the matching student tensor(s).
            labels: the batch's targets. Defaults to `None`.
            sample_weight: per-sample weights. Defaults to `None`.
            mask: a padding mask of the student's tensor. Defaults to
                `None`: its Keras mask, if any.
            inputs: the batch's inputs. Defaults to `None`.
            training: whether this is a training step. Defaults to `False`.

        Returns:
            A float32 scalar.
        """
        pairs = len(self.teacher_sources)
        teachers = list(teacher_outputs) if pairs > 1 else [teacher_outputs]
        students = list(student_outputs) if pairs > 1 else [student_outputs]
        return self._total(
            zip(teachers, students), labels, sample_weight, mask, inputs, training
        )

    def build(self, teacher_specs, student_specs):
        """Creates the loss's own layers from the shapes of what it reads.

        Called once by the Distiller before training, with what the sources
        read from the models' symbolic forward passes (`keras.KerasTensor`s,
        one per pair). The default creates nothing.
        """
        self.built = True

    def build_from_specs(self, teacher_specs, student_specs):
        """`build`, keeping the shapes for `get_build_config` (the Distiller
        builds its losses this way)."""
        self._build_shapes = keras.tree.map_structure(
            lambda x: list(x.shape), [list(teacher_specs), list(student_specs)]
        )
        self.build(teacher_specs, student_specs)

    def get_build_config(self):
        """The shapes `build` was given, so that a loaded loss rebuilds."""
        if self._build_shapes is None:
            return None
        return {"shapes": self._build_shapes}

    def build_from_config(self, config):
        """Rebuilds the loss from `get_build_config`'s shapes."""
        if config and not self.built:
            teacher, student = keras.tree.map_shape_structure(
                lambda shape: keras.KerasTensor(tuple(shape)), config["shapes"]
            )
            self.build(teacher, student)

    def validate_model_compatibility(self, teacher, student):
        """Checks, before training, that the models suit this loss.

        Called once by the `Distiller`. The default accepts any models.
        """

    def check_values(self, teacher, student, labels=None):
        """Checks, once before training, what this loss reads of real data.

        Called by `fit`, `evaluate`, `train_on_batch` and `test_on_batch`
        on the first samples of in-memory data (not of datasets), with
        NumPy arrays: catches inputs that have the right shapes but the
        wrong meaning (probabilities where logits are expected, labels out
        of range). The default accepts anything.

        Args:
            teacher: one pair's teacher values (a structure of arrays for a
                loss that reads several outputs at once).
            student: the matching student values.
            labels: the samples' labels as arrays, or `None`.
        """

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Checks that one pair of teacher and student tensors suits this loss.

        Called with symbolic tensors when the Distiller is built, and at trace
        time otherwise, so shape errors surface before any training happens.
        The default accepts anything.
        """

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.pop("trainable", None)
        config["teacher"] = _sources_config(self.teacher_sources)
        config["student"] = _sources_config(self.student_sources)
        config["input_mask"] = self.input_mask
        return config


def _sources_config(found):
    def one(source):
        if isinstance(source, sources_module.Output) and source.key is None:
            return None
        if isinstance(source, (sources_module.Layer, sources_module.Attention)):
            return source.tap_paths()[0]
        return keras.saving.serialize_keras_object(source)

    return one(found[0]) if len(found) == 1 else [one(s) for s in found]


def _completing_base_init(init):
    """`init`, followed by `DistillationLoss.__init__()` if it skipped it."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if not hasattr(self, "teacher_sources"):
            # What the subclass set stays: the layer's tracking began with
            # its first attribute, and this __init__ does not reset it.
            DistillationLoss.__init__(self)

    __init__.completes_base_init = True
    # Keras reads the constructor's arguments (for `get_config`) from this.
    __init__.__signature__ = inspect.signature(init)
    return __init__


_CONTEXT_KEYWORDS = ("labels", "sample_weight", "mask", "inputs", "training")
_ACCEPTED = {}


def _accepted(method, context):
    """The context fields a `compute_loss(t, s, ...)` override takes."""
    owner = type(method.__self__)
    if owner not in _ACCEPTED:
        parameters = inspect.signature(method).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            _ACCEPTED[owner] = _CONTEXT_KEYWORDS
        else:
            _ACCEPTED[owner] = tuple(n for n in _CONTEXT_KEYWORDS if n in parameters)
    return {name: getattr(context, name) for name in _ACCEPTED[owner]}


class PerSampleLoss(DistillationLoss):
    """Base of losses with one value per sample (or per position).

    Subclasses implement `per_sample(context)`, returning values of shape
    `(B, ...)` (the compared tensors' shape without the last axis, say).
    The base reduces them like `keras.losses.Loss` with
    `"sum_over_batch_size"`: the sum of `value * sample_weight` over the
    positions the padding mask keeps, divided by their number. A mask of
    another rank than the values (a sequence mask on a per-sample value) is
    left to `per_sample`.
    """

    def compute(self, context):
        values = self.per_sample(context)
        mask = context.mask
        if mask is not None and len(mask.shape) != len(values.shape):
            mask = None
        return weighted_mean(values, context.sample_weight, mask)

    def per_sample(self, context):
        """Per-sample loss values; implemented by subclasses.

        Args:
            context: a `LossContext`.

        Returns:
            A tensor of shape `(B, ...)`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `per_sample(context)`."
        )


class BatchLoss(DistillationLoss):
    """Base of losses on the whole batch at once.

    Relations between samples (RKD, similarity preserving, PKT), correlations
    over the batch (DIST's intra-class term) and contrastive losses (CRD)
    are not means of per-sample values. Subclasses implement
    `compute(context)` and return the batch's scalar, weighting samples by
    `context.sample_weight` as their conventions say.
    """

    def compute(self, context):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute(context)`."
        )


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
