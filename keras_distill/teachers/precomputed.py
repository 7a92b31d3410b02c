"""Teachers whose outputs were computed once, stored beside the data."""

import math
import os

import keras
import numpy as np
from keras import ops

from keras_distill.teachers.base import Teacher


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
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"precompute(top_k={top_k!r}): top_k must be an int >= 1, or None.")
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
        if top_k is not None and top_k > logits.shape[-1]:
            raise ValueError(
                f"precompute(top_k={top_k}): the teacher scores only "
                f"{logits.shape[-1]} classes. Keep at most {logits.shape[-1]} "
                "(or all of them, with top_k=None)."
            )
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
class Precomputed(Teacher):
    """A teacher whose outputs were computed beforehand (`precompute`).

    The data carry the outputs beside the student's inputs, as a dict
    `{"inputs": x, **precompute(teacher, x)}`; this model returns them as
    logits, and the Distiller gives the student `inputs`. Kept top-k logits
    are spread back over `num_classes`, the other classes at a logit of
    `-inf`: their probability is exactly zero at any temperature (forward
    KD ignores them; reverse KD renormalises the student over the kept
    classes).

    Args:
        num_classes: the number of classes; needed with top-k outputs.
            Defaults to `None`.
        inputs_key: the key of the student's inputs. Defaults to
            `"inputs"`.
        name: the model's name. Defaults to `"precomputed"`.

    Example:

    ```python
    outputs = keras_distill.teachers.precompute(big_model, x_train)
    distiller = keras_distill.Distiller(Precomputed(), student, KD(temperature=4.0))
    distiller.fit({"inputs": x_train, **outputs}, y_train)
    ```
    """

    def __init__(self, num_classes=None, inputs_key="inputs", name="precomputed", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.inputs_key = inputs_key
        self.built = True

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict):
            raise ValueError(
                "A Precomputed teacher reads its outputs from the data, a dict "
                f"{{{self.inputs_key!r}: inputs, **precompute(teacher, inputs)}}; "
                f"received a {type(inputs).__name__}."
            )
        if "logits" in inputs:
            return ops.cast(inputs["logits"], "float32")
        if "top_logits" not in inputs or self.num_classes is None:
            raise ValueError(
                "A Precomputed teacher reads 'logits', or 'top_logits' and "
                "'top_classes' with `num_classes` given, from the inputs; "
                f"received keys {list(inputs)} and num_classes="
                f"{self.num_classes}."
            )
        indices = ops.cast(inputs["top_classes"], "int32")
        # A class outside [0, num_classes) makes its sample's logits NaN, on
        # every backend (one_hot would drop it on some and fail on others),
        # so that training stops with an error naming the distillation terms.
        valid = ops.all((indices >= 0) & (indices < self.num_classes), axis=-1)
        indices = ops.clip(indices, 0, self.num_classes - 1)
        classes = ops.one_hot(indices, self.num_classes)  # (B, k, C)
        values = ops.cast(inputs["top_logits"], "float32")[..., None]
        kept = ops.sum(classes, axis=1) > 0
        logits = ops.where(kept, ops.sum(classes * values, axis=1), -math.inf)
        return ops.where(valid[..., None], logits, math.nan)

    def student_view(self, inputs):
        """The student's inputs, under `inputs_key`; inputs that are not
        such a dict are the student's own (`distiller.predict(x_test)`)."""
        if isinstance(inputs, dict) and self.inputs_key in inputs:
            return inputs[self.inputs_key]
        return inputs

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

        if "top_classes" in x:
            if self.num_classes is None:
                raise ValueError(
                    "The data hold top-k outputs of precompute(top_k=...), so "
                    "the Precomputed teacher needs the number of classes to "
                    "spread them over: Precomputed(num_classes=...)."
                )
            largest = int(np.max(x["top_classes"])) if len(x["top_classes"]) else -1
            if largest >= self.num_classes:
                raise ValueError(
                    f"Precomputed(num_classes={self.num_classes}) is too small "
                    f"for the precomputed outputs, which name class {largest}. "
                    f"Pass the teacher's class count (at least {largest + 1})."
                )
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
