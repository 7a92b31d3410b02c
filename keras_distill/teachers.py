"""Teacher wrappers: several teachers seen by the Distiller as one."""

import keras
from keras import ops

from keras_distill.taps import symbolic_inputs

__all__ = ["MultiTeacher"]

COMBINE = ("mean_logits", "mean_probabilities", "confidence")


@keras.saving.register_keras_serializable(package="keras_distill")
class MultiTeacher(keras.Model):
    """Several teachers distilled as one: an ensemble's combined logits.

    Runs every teacher on the input and combines their logits:

    - `"mean_logits"`: the weighted mean of the logits;
    - `"mean_probabilities"`: the log of the weighted mean of the
      probabilities (log-probabilities are logits: their softmax is the
      ensemble's averaged distribution);
    - `"confidence"`: per sample, the logits weighted by each teacher's
      confidence (its top probability, times its fixed weight),
      normalised over the teachers.

    Pass it as the `Distiller`'s teacher. Each teacher's layers stay
    reachable by feature and relation losses as `"<teacher name>/<layer>"`.
    Teachers may differ in architecture; they must agree on the number of
    classes. Like every teacher, they run once per step, in inference mode.

    Args:
        teachers: a list of built Keras models with distinct names.
        weights: one non-negative weight per teacher, or `None` for equal
            weights. Defaults to `None`.
        combine: one of `"mean_logits"`, `"mean_probabilities"` and
            `"confidence"`. Defaults to `"mean_logits"`.
        name: the model's name. Defaults to `"multi_teacher"`.

    Example:

    ```python
    ensemble = keras_distill.teachers.MultiTeacher([cnn, mlp, resnet])
    distiller = keras_distill.Distiller(ensemble, student, KD(4.0))
    ```

    Reference:
        Bucila, Caruana and Niculescu-Mizil, "Model Compression", KDD 2006;
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", 2015.
    """

    def __init__(
        self, teachers, weights=None, combine="mean_logits", name="multi_teacher",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        teachers = list(teachers)
        if len(teachers) < 1 or not all(isinstance(t, keras.Model) for t in teachers):
            raise TypeError(
                "MultiTeacher takes a list of Keras models; received "
                f"{[type(t).__name__ for t in teachers]}."
            )
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(
                f"MultiTeacher's teachers need distinct names (their layers are "
                f"reached as '<teacher name>/<layer>'); received {names}."
            )
        classes = {
            t.name: t.outputs[0].shape[-1]
            for t in teachers
            if getattr(t, "outputs", None)
        }
        if len(set(classes.values())) > 1:
            raise ValueError(
                "MultiTeacher combines its teachers' logits class by class, so "
                f"they must have the same number of classes; received {classes}."
            )
        if combine not in COMBINE:
            raise ValueError(
                f"`combine` must be one of {COMBINE}; received {combine!r}."
            )
        weights = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(teachers) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"MultiTeacher needs one weight >= 0 per teacher ({len(teachers)}), "
                f"not all zero; received {weights}."
            )
        self.teachers = teachers
        self.teacher_weights = [w / sum(weights) for w in weights]
        self.combine = combine
        inputs = symbolic_inputs(teachers[0])
        if inputs is not None:  # built like the teachers, for the taps
            self.build(keras.tree.map_structure(lambda x: x.shape, inputs))

    def call(self, inputs, training=False):
        logits = ops.stack(
            [ops.cast(t(inputs, training=training), "float32") for t in self.teachers]
        )  # (teachers, B, classes)
        weights = ops.reshape(
            ops.convert_to_tensor(self.teacher_weights, "float32"), (-1, 1, 1)
        )
        if self.combine == "mean_logits":
            return ops.sum(weights * logits, axis=0)
        log_probabilities = ops.log_softmax(logits, axis=-1)
        if self.combine == "mean_probabilities":
            return ops.logsumexp(log_probabilities + ops.log(weights), axis=0)
        confidence = ops.exp(ops.max(log_probabilities, axis=-1, keepdims=True))
        confidence = weights * confidence
        confidence = confidence / ops.sum(confidence, axis=0, keepdims=True)
        return ops.sum(confidence * logits, axis=0)

    def get_config(self):
        return {
            "name": self.name,
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "weights": self.teacher_weights,
            "combine": self.combine,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["teachers"]
        ]
        return cls(**config)
