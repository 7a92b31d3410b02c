"""Ensembles: several teachers distilled as one, with specialists."""

import math

import keras
from keras import ops

from keras_distill.taps import symbolic_inputs
from keras_distill.teachers.base import Teacher

COMBINE = ("mean_logits", "mean_probabilities", "confidence")


@keras.saving.register_keras_serializable(package="keras_distill")
class MultiTeacher(Teacher):
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

    Hinton et al.'s generalists and specialists: a specialist is trained on
    a subset of confusable classes plus one "dustbin" class for all the
    others. Name it in `specialists` with its classes; its outputs are then
    the logits of those classes in that order, followed by the dustbin's.
    Before combining, its distribution is spread over every class: its own
    probabilities on its classes, and its dustbin probability shared among
    the other classes in proportion to the generalists' (the teachers not
    in `specialists`, their probabilities averaged with their weights).

    Args:
        teachers: a list of built Keras models with distinct names.
        weights: one non-negative weight per teacher, or `None` for equal
            weights. Defaults to `None`.
        combine: one of `"mean_logits"`, `"mean_probabilities"` and
            `"confidence"`. Defaults to `"mean_logits"`.
        specialists: a dict `{teacher name: [class indices]}` of the
            teachers that are specialists. Defaults to `None`: none.
        name: the model's name. Defaults to `"multi_teacher"`.

    Example:

    ```python
    ensemble = keras_distill.teachers.MultiTeacher([cnn, mlp, resnet])
    distiller = keras_distill.Distiller(ensemble, student, KD(temperature=4.0))

    # A generalist over 10 classes and a specialist in shirts (6), T-shirts
    # (0) and pullovers (2), whose fourth output is its dustbin class.
    teacher = keras_distill.teachers.MultiTeacher(
        [generalist, shirts], combine="mean_probabilities",
        specialists={"shirts": [6, 0, 2]},
    )
    ```

    Reference:
        Bucila, Caruana and Niculescu-Mizil, "Model Compression", KDD 2006;
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", 2015.
    """

    def __init__(
        self, teachers, weights=None, combine="mean_logits", specialists=None,
        name="multi_teacher", **kwargs,
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
        specialists = _check_specialists(specialists or {}, teachers)
        classes = {
            t.name: t.outputs[0].shape[-1]
            for t in teachers
            if getattr(t, "outputs", None) and t.name not in specialists
        }
        if len(set(classes.values())) > 1:
            raise ValueError(
                "MultiTeacher combines its teachers' logits class by class, so "
                f"they must have the same number of classes; received {classes}."
                " A teacher of a subset of the classes is a specialist: name "
                "it in `specialists`."
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
        num_classes = next(iter(classes.values()), None)
        for name, subset in specialists.items():
            if num_classes is not None and (
                max(subset) >= num_classes or len(subset) >= num_classes
            ):
                raise ValueError(
                    f"MultiTeacher: specialist {name!r} must cover a proper "
                    f"subset of the {num_classes} classes; received {subset}."
                )
        if specialists and not sum(
            w for t, w in zip(teachers, weights) if t.name not in specialists
        ):
            raise ValueError(
                "MultiTeacher: the generalists' weights are all 0, so there is "
                "nothing to share out the specialists' dustbin classes with."
            )
        self.teachers = teachers
        self.teacher_weights = [w / sum(weights) for w in weights]
        self.combine = combine
        self.specialists = specialists
        generalist = next(t for t in teachers if t.name not in specialists)
        inputs = symbolic_inputs(generalist)
        if inputs is not None:  # built like the teachers, for the taps
            self.build(keras.tree.map_structure(lambda x: x.shape, inputs))

    def call(self, inputs, training=False):
        outputs = {
            t.name: ops.cast(t(inputs, training=training), "float32")
            for t in self.teachers
        }
        if self.specialists:
            outputs = self._spread_specialists(outputs)
        logits = ops.stack([outputs[t.name] for t in self.teachers])
        weights = ops.reshape(
            ops.convert_to_tensor(self.teacher_weights, "float32"), (-1, 1, 1)
        )  # logits: (teachers, B, classes)
        if self.combine == "mean_logits":
            return ops.sum(weights * logits, axis=0)
        log_probabilities = ops.log_softmax(logits, axis=-1)
        if self.combine == "mean_probabilities":
            return ops.logsumexp(log_probabilities + ops.log(weights), axis=0)
        confidence = ops.exp(ops.max(log_probabilities, axis=-1, keepdims=True))
        confidence = weights * confidence
        confidence = confidence / ops.sum(confidence, axis=0, keepdims=True)
        return ops.sum(confidence * logits, axis=0)

    def _spread_specialists(self, outputs):
        """Each specialist's log-probabilities over every class."""
        generalists = [
            (outputs[t.name], w)
            for t, w in zip(self.teachers, self.teacher_weights)
            if t.name not in self.specialists
        ]
        total = sum(w for _, w in generalists)
        log_generalist = ops.logsumexp(
            ops.stack(
                [ops.log_softmax(l, -1) + math.log(w / total) for l, w in generalists
                 if w > 0]
            ),
            axis=0,
        )  # (B, C): the generalists' mixture
        num_classes = log_generalist.shape[-1]
        spread = dict(outputs)
        for name, classes in self.specialists.items():
            own = ops.log_softmax(outputs[name], -1)  # (B, k + 1)
            others = [c for c in range(num_classes) if c not in classes]
            # Class c of the specialist's subset is its output classes.index(c).
            index = [classes.index(c) if c in classes else len(classes)
                     for c in range(num_classes)]
            in_subset = ops.convert_to_tensor(
                [c in classes for c in range(num_classes)], "bool"
            )
            dustbin_share = log_generalist - ops.logsumexp(
                ops.take(log_generalist, others, axis=-1), axis=-1, keepdims=True
            )
            spread[name] = ops.where(
                in_subset,
                ops.take(own, index, axis=-1),
                ops.take(own, index, axis=-1) + dustbin_share,
            )
        return spread

    def get_config(self):
        return {
            "name": self.name,
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "weights": self.teacher_weights,
            "combine": self.combine,
            "specialists": self.specialists,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["teachers"]
        ]
        return cls(**config)


def _check_specialists(specialists, teachers):
    """`specialists` as `{name: [int, ...]}`, checked against the teachers."""
    by_name = {t.name: t for t in teachers}
    unknown = [name for name in specialists if name not in by_name]
    if unknown:
        raise ValueError(
            f"MultiTeacher: specialists {unknown} are not among the teachers "
            f"{list(by_name)}."
        )
    if len(specialists) == len(teachers):
        raise ValueError(
            "MultiTeacher: every teacher is a specialist; at least one "
            "generalist (a teacher of all classes) must remain, to share out "
            "the specialists' dustbin classes."
        )
    checked = {}
    for name, classes in specialists.items():
        classes = [int(c) for c in classes]
        if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
            raise ValueError(
                f"MultiTeacher: specialist {name!r} needs distinct, "
                f"non-negative class indices; received {classes}."
            )
        outputs = getattr(by_name[name], "outputs", None)
        if outputs and outputs[0].shape[-1] != len(classes) + 1:
            raise ValueError(
                f"MultiTeacher: specialist {name!r} covers {len(classes)} "
                f"classes, so it needs {len(classes) + 1} outputs (its classes, "
                f"then the dustbin); it has {outputs[0].shape[-1]}."
            )
        checked[name] = classes
    return checked
