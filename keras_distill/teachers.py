"""Teacher wrappers: ensembles, other modalities, stored outputs, self-copies.

`MovingAverage` and `Snapshot` live in `keras_distill.student_copies` and
are exported here with the other teachers.
"""

import math
import os

import keras
import numpy as np
from keras import ops

from keras_distill.student_copies import MovingAverage
from keras_distill.student_copies import Snapshot
from keras_distill.taps import symbolic_inputs

__all__ = [
    "CrossModal",
    "MovingAverage",
    "MultiTeacher",
    "Precomputed",
    "Snapshot",
    "load_precomputed",
    "precompute",
]

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
    distiller = keras_distill.Distiller(ensemble, student, KD(4.0))

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


def _view(selector, inputs, role):
    if callable(selector):
        return selector(inputs)
    if not isinstance(inputs, dict) or selector not in inputs:
        available = list(inputs) if isinstance(inputs, dict) else "not a dict"
        raise ValueError(
            f"CrossModal's {role}_input={selector!r} picks a key of dict "
            f"inputs; the inputs have keys {available}."
        )
    return inputs[selector]


@keras.saving.register_keras_serializable(package="keras_distill")
class CrossModal(keras.Model):
    """A teacher that sees another modality of each sample than the student.

    The data hold every modality of a sample (for example a dict with
    `"pixels"` and `"fourier"`); `teacher_input` picks or derives the
    teacher's view, `student_input` the student's. Pass it as the
    `Distiller`'s teacher: the Distiller then gives the student its own
    view, in training, evaluation and prediction alike. The exported
    student takes its modality alone. The teacher's layers are reached as
    `"<teacher name>/<layer>"`.

    Args:
        teacher: the teacher, a built Keras model.
        teacher_input: a key of the dict inputs, or a callable
            `inputs -> teacher inputs`.
        student_input: the same for the student.
        name: the model's name. Defaults to `"cross_modal"`.

    Example:

    ```python
    teacher = keras_distill.teachers.CrossModal(
        pixel_cnn, teacher_input="pixels", student_input="fourier"
    )
    distiller = keras_distill.Distiller(teacher, fourier_mlp, KD(4.0))
    distiller.fit({"pixels": images, "fourier": coefficients}, labels)
    ```

    Reference:
        Gupta, Hoffman and Malik, "Cross Modal Distillation for Supervision
        Transfer", CVPR 2016.
    """

    def __init__(
        self, teacher, teacher_input, student_input, name="cross_modal", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(teacher, keras.Model):
            raise TypeError(
                f"CrossModal wraps a Keras model; received {type(teacher).__name__}."
            )
        for role, selector in (("teacher", teacher_input), ("student", student_input)):
            if not (callable(selector) or isinstance(selector, str)):
                raise TypeError(
                    f"CrossModal: `{role}_input` must be a dict key (str) or a "
                    f"callable; received {selector!r}."
                )
        self.teacher = teacher
        self.teacher_input = teacher_input
        self.student_input = student_input
        inputs = symbolic_inputs(teacher)
        if inputs is not None and isinstance(teacher_input, str):
            self.build({teacher_input: inputs.shape})

    def call(self, inputs, training=False):
        return self.teacher(_view(self.teacher_input, inputs, "teacher"), training=training)

    def student_view(self, inputs):
        """What the student sees of `inputs`."""
        return _view(self.student_input, inputs, "student")

    def get_config(self):
        def selector(value):
            return value if isinstance(value, str) else (
                keras.saving.serialize_keras_object(value)
            )

        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "teacher_input": selector(self.teacher_input),
            "student_input": selector(self.student_input),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "teacher_input", "student_input"):
            if not isinstance(config[key], str):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def precompute(teacher, x, batch_size=256, top_k=None, path=None):
    """Computes a teacher's outputs once, for distilling without running it.

    Args:
        teacher: any callable from a batch of inputs to a batch of logits
            (a Keras model, a function wrapping a PyTorch model or a remote
            API, ...).
        x: the inputs, an array (or a dict of arrays) with samples first.
        batch_size: samples per call. Defaults to 256.
        top_k: keep only the `top_k` largest logits per sample (and their
            class indices), for large vocabularies. Defaults to `None`: all.
        path: a folder to write the outputs to as `.npy` files, which are
            then memory-mapped (for outputs larger than RAM). It must not
            exist yet. Defaults to `None`: in memory.

    Returns:
        A dict of arrays: `{"logits": (N, C)}`, or with `top_k`
        `{"top_logits": (N, k), "top_classes": (N, k)}`. Put it beside the
        student's inputs in the data and distil with a `Precomputed`
        teacher.
    """
    n = len(keras.tree.flatten(x)[0])
    if path is not None:
        if os.path.exists(path):
            raise FileExistsError(
                f"precompute(path={path!r}): the folder exists; give a new "
                "one, so that no earlier outputs are overwritten."
            )
        os.makedirs(path)
    arrays = {}

    def store(name, batch, start):
        if name not in arrays:
            shape, dtype = (n, *batch.shape[1:]), batch.dtype
            arrays[name] = (
                np.empty(shape, dtype) if path is None else np.lib.format.open_memmap(
                    os.path.join(path, f"{name}.npy"), "w+", dtype, shape
                )
            )
        arrays[name][start : start + len(batch)] = batch

    for start in range(0, n, batch_size):
        inputs = keras.tree.map_structure(lambda a: a[start : start + batch_size], x)
        logits = np.asarray(ops.convert_to_numpy(teacher(inputs)), "float32")
        if top_k is None:
            store("logits", logits, start)
        else:
            classes = np.argsort(-logits, axis=-1)[:, :top_k]
            store("top_logits", np.take_along_axis(logits, classes, -1), start)
            store("top_classes", classes.astype("int32"), start)
    if path is not None:
        for array in arrays.values():
            array.flush()
        return load_precomputed(path)
    return arrays


def load_precomputed(path):
    """The outputs `precompute(..., path=path)` wrote, memory-mapped."""
    return {
        name[: -len(".npy")]: np.load(os.path.join(path, name), mmap_mode="r")
        for name in sorted(os.listdir(path))
        if name.endswith(".npy")
    }


@keras.saving.register_keras_serializable(package="keras_distill")
class Precomputed(keras.Model):
    """A teacher whose outputs were computed beforehand (`precompute`).

    The data carry the outputs beside the student's inputs, as a dict
    `{"inputs": x, **precompute(teacher, x)}`; this model returns them as
    logits, and the Distiller gives the student `inputs`. Kept top-k logits
    are spread back over `num_classes`, the other classes at -1e9, so that
    their probability is zero at any temperature.

    Args:
        num_classes: the number of classes; needed with top-k outputs.
            Defaults to `None`.
        inputs_key: the key of the student's inputs. Defaults to
            `"inputs"`.
        name: the model's name. Defaults to `"precomputed"`.

    Example:

    ```python
    outputs = keras_distill.teachers.precompute(big_model, x_train)
    distiller = keras_distill.Distiller(Precomputed(), student, KD(4.0))
    distiller.fit({"inputs": x_train, **outputs}, y_train)
    ```
    """

    def __init__(self, num_classes=None, inputs_key="inputs", name="precomputed", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.inputs_key = inputs_key
        self.built = True

    def call(self, inputs, training=False):
        if "logits" in inputs:
            return ops.cast(inputs["logits"], "float32")
        if "top_logits" not in inputs or self.num_classes is None:
            raise ValueError(
                "A Precomputed teacher reads 'logits', or 'top_logits' and "
                "'top_classes' with `num_classes` given, from the inputs; "
                f"received keys {list(inputs)} and num_classes="
                f"{self.num_classes}."
            )
        classes = ops.one_hot(inputs["top_classes"], self.num_classes)  # (B, k, C)
        values = ops.cast(inputs["top_logits"], "float32")[..., None]
        kept = ops.sum(classes, axis=1)
        return ops.sum(classes * values, axis=1) + (1.0 - kept) * -1e9

    def student_view(self, inputs):
        """The student's inputs, under `inputs_key`."""
        return inputs[self.inputs_key]

    def check_data(self, x):
        """Raises a clear error when arrays `x` do not pair inputs and outputs.

        Called by `Distiller.fit` and `evaluate` on in-memory data (dicts of
        arrays); datasets and generators are not inspected.

        Args:
            x: the data given to `fit`.

        Raises:
            ValueError: when `inputs_key` or the outputs are missing, or the
                outputs hold another number of samples than the inputs.
        """
        if not isinstance(x, dict):
            raise ValueError(
                "A Precomputed teacher reads its outputs from the data: pass "
                f"x as a dict {{{self.inputs_key!r}: inputs, "
                "**precompute(teacher, inputs)}}; received "
                f"{type(x).__name__}."
            )
        outputs = [k for k in ("logits", "top_logits", "top_classes") if k in x]
        if self.inputs_key not in x or not outputs:
            raise ValueError(
                f"A Precomputed teacher needs the inputs under "
                f"{self.inputs_key!r} and the outputs of precompute() in the "
                f"data; received keys {list(x)}."
            )

        def count(value):
            return len(keras.tree.flatten(value)[0])

        counts = {key: count(x[key]) for key in [self.inputs_key, *outputs]}
        if len(set(counts.values())) > 1:
            raise ValueError(
                "The precomputed teacher outputs do not match the inputs, "
                f"sample for sample: their counts are {counts}. Compute them "
                "with precompute(teacher, inputs) on these same inputs, in "
                "the same order."
            )

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "inputs_key": self.inputs_key}
