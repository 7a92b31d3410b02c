"""Teacher wrappers: ensembles, other modalities, stored outputs, self-copies.

`MovingAverage` and `Snapshot` live in `keras_distill.student_copies` and
are exported here with the other teachers.
"""

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

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "inputs_key": self.inputs_key}
