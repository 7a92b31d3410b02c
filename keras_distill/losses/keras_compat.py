"""Drop-in replacements for `keras.distillation`'s two loss classes.

They take the same arguments as `keras.distillation.LogitsDistillation` and
`keras.distillation.FeatureDistillation`, so a script changes only its
import, but they also honour `sample_weight` and padding masks, and
`LogitsDistillation` does the knowledge-distillation math Keras's skips:
with its default `loss="kl_divergence"`, Keras compares the temperature-
scaled logits without a softmax or the T^2 factor; here the teacher's
softened probabilities are the targets and the loss is scaled by T^2.
"""

import keras
from keras import ops

from keras_distill import sources
from keras_distill._keras_internals import get_keras_mask
from keras_distill._keras_internals import set_untracked
from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.base import weighted_mean
from keras_distill.losses.response import check_class_counts
from keras_distill.losses.response import check_scores
from keras_distill.losses.response import kd
from keras_distill.losses.response import soft_log_probabilities


def _as_loss(identifier):
    return None if identifier is None else keras.losses.get(identifier)


def _per_sample(loss_fn, y_true, y_pred):
    """Unreduced values of a Keras loss function or `Loss` instance."""
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.call(y_true, y_pred)
    return loss_fn(y_true, y_pred)


def _structure(outputs):
    """`outputs` with each tensor shown as its shape, for error messages."""
    return keras.tree.map_structure(lambda x: f"<{tuple(x.shape)}>", outputs)


def _is_kl_divergence(loss_fn):
    fn = getattr(loss_fn, "fn", loss_fn)  # unwrap `keras.losses.KLDivergence`
    return fn is keras.losses.kl_divergence


class _StructuredLoss(DistillationLoss):
    """A Keras loss, or a structure of them mirroring the compared tensors."""

    def __init__(self, loss, teacher, student, name=None, **kwargs):
        super().__init__(teacher, student, name=name, **kwargs)
        # Past the layer's attribute tracking, which would turn the lists and
        # dicts into tracked types that no longer match the outputs'.
        set_untracked(self, "loss", keras.tree.map_structure(_as_loss, loss))
        if all(fn is None for fn in keras.tree.flatten(self.loss)):
            raise ValueError(
                f"{type(self).__name__}: `loss` must hold at least one loss "
                "that is not None."
            )

    def _pairs(self, teacher_outputs, student_outputs):
        """(loss_fn, teacher, student) for each tensor the loss covers."""
        if not keras.tree.is_nested(self.loss):
            return [
                (
                    self.loss,
                    sources.select_output(teacher_outputs, None),
                    sources.select_output(student_outputs, None),
                )
            ]
        try:
            keras.tree.assert_same_structure(self.loss, student_outputs)
            keras.tree.assert_same_structure(self.loss, teacher_outputs)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{type(self).__name__}: the structure of `loss` "
                f"({keras.tree.map_structure(lambda _: '.', self.loss)}) must "
                "match the models' outputs, with None for outputs to skip. "
                f"{error}"
            ) from None
        return [
            (fn, t, s)
            for fn, t, s in zip(
                keras.tree.flatten(self.loss),
                keras.tree.flatten(teacher_outputs),
                keras.tree.flatten(student_outputs),
            )
            if fn is not None
        ]

    def prediction_pair(self, teacher_pass, student_pass):
        ((teacher, student),) = self.read(teacher_pass, student_pass)
        _, teacher, student = self._pairs(teacher, student)[0]
        return teacher, student

    def padding_mask(self, student, inputs):
        return None  # each output's own, in `compute`, unless one is given

    def validate_outputs(self, teacher_outputs, student_outputs):
        try:
            keras.tree.assert_same_structure(teacher_outputs, student_outputs)
        except (ValueError, TypeError):
            raise ValueError(
                f"{type(self).__name__} compares the teacher's and the "
                "student's tensors one to one, but their structures differ: "
                f"the teacher's are {_structure(teacher_outputs)}, the "
                f"student's {_structure(student_outputs)}. Make both models "
                "return the same structure (the same dict keys, or lists of "
                "the same length)."
            ) from None
        for _, teacher, student in self._pairs(teacher_outputs, student_outputs):
            self.validate_pair(teacher, student)

    def compute(self, context):
        total = 0.0
        for loss_fn, teacher, student in self._pairs(context.teacher, context.student):
            values = self._values(loss_fn, teacher, student)
            mask = get_keras_mask(student) if context.mask is None else context.mask
            total = total + weighted_mean(values, context.sample_weight, mask)
        return total

    def get_config(self):
        config = super().get_config()
        for key in ("teacher", "student", "input_mask"):
            del config[key]
        return {**config, "loss": keras.saving.serialize_keras_object(self.loss)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_distill")
class LogitsDistillation(_StructuredLoss):
    """`keras.distillation.LogitsDistillation`, with the math of KD.

    For each distilled output, the teacher's softened probabilities
    `softmax(teacher / T)` are the targets. With the default
    `"kl_divergence"` the loss is exactly `keras_distill.losses.KD`:
    `T^2 KL(softmax(teacher / T) || softmax(student / T))`, computed from
    log-probabilities. Another Keras loss receives those targets and the
    student's softened probabilities (or the scaled logits `student / T` if
    the loss was built with `from_logits=True`), and is also scaled by T^2.

    Args:
        temperature: softmax temperature T > 0, schedulable. Defaults to 3
            (Keras's default).
        loss: a Keras loss (name, function or `Loss` instance), or a list or
            dict of them mirroring the models' outputs, with `None` for
            outputs not to distil. Defaults to `"kl_divergence"`.
        name: the loss's name in the logs. Defaults to
            `"logits_distillation"`.

    Example:

    ```python
    # was: from keras.distillation import Distiller, LogitsDistillation
    from keras_distill import Distiller, LogitsDistillation

    distiller = Distiller(teacher, student, LogitsDistillation(temperature=3.0))
    ```
    """

    compares_predictions = True

    def __init__(self, temperature=3.0, loss="kl_divergence", name=None, **kwargs):
        super().__init__(
            loss, sources.AllOutputs(), sources.AllOutputs(), name=name, **kwargs
        )
        self._add_temperature(temperature)

    def validate_pair(self, teacher, student):
        check_class_counts(self, teacher, student)

    def check_values(self, teacher, student, labels=None):
        for _, t, s in self._pairs(teacher, student):
            check_scores(self, t, "teacher")
            check_scores(self, s, "student")

    def _values(self, loss_fn, teacher, student):
        if _is_kl_divergence(loss_fn):
            return kd(teacher, student, self.temperature_variable)
        targets = ops.exp(soft_log_probabilities(teacher, self.temperature_variable))
        if getattr(loss_fn, "from_logits", False):
            predictions = ops.cast(student, "float32") / self.temperature_variable
        else:
            predictions = ops.exp(
                soft_log_probabilities(student, self.temperature_variable)
            )
        values = _per_sample(loss_fn, targets, predictions)
        return values * ops.square(ops.cast(self.temperature_variable, "float32"))

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
        }


@keras.saving.register_keras_serializable(package="keras_distill")
class FeatureDistillation(_StructuredLoss):
    """`keras.distillation.FeatureDistillation`: a loss between features.

    Compares the teacher's and the student's outputs, or the outputs of the
    named layers, with a Keras loss (`"mse"` by default), honouring
    `sample_weight` and padding masks. The features must have the same
    shape.

    Args:
        loss: a Keras loss, or a structure of them mirroring the outputs,
            `None` to skip one. Defaults to `"mse"`.
        teacher_layer_name: name of the teacher layer whose output to use;
            `None` for the model's outputs. Defaults to `None`.
        student_layer_name: the same for the student. Defaults to `None`.
        name: the loss's name in the logs. Defaults to
            `"feature_distillation"`.

    Example:

    ```python
    FeatureDistillation(
        loss="mse", teacher_layer_name="hidden", student_layer_name="hidden"
    )
    ```
    """

    def __init__(
        self,
        loss="mse",
        teacher_layer_name=None,
        student_layer_name=None,
        name=None,
        **kwargs,
    ):
        def source(layer_name):
            return sources.AllOutputs() if layer_name is None else sources.Layer(layer_name)

        super().__init__(
            loss, source(teacher_layer_name), source(student_layer_name), name=name,
            **kwargs,
        )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name

    def validate_pair(self, teacher, student):
        t_shape, s_shape = tuple(teacher.shape), tuple(student.shape)
        if len(t_shape) != len(s_shape) or any(
            t is not None and s is not None and t != s
            for t, s in zip(t_shape[1:], s_shape[1:])
        ):
            raise ValueError(
                f"FeatureDistillation compares features of equal shape, but "
                f"the teacher's are {t_shape} and the student's {s_shape}. "
                "Choose layers whose outputs have the same shape."
            )

    def _values(self, loss_fn, teacher, student):
        return _per_sample(
            loss_fn, ops.cast(teacher, "float32"), ops.cast(student, "float32")
        )

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
        }
