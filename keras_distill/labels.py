"""Samples without a label: they take part in distillation, not in the label loss.

A transfer set (Hinton et al., 2015; Bucila et al., 2006) mixes a few
labelled samples with many that only the teacher labels. Mark a sample's
integer class label `UNLABELLED` (-1) and train on all of them together:

- the loss on the labels (the `loss` given to `compile`) and the
  compiled metrics average over the labelled samples only, as Keras's
  `SparseCategoricalCrossentropy(ignore_class=-1)` does;
- every distillation loss reads every sample;
- a batch without a labelled sample has a label loss of 0.

Example:

```python
x = np.concatenate([x_labelled, x_unlabelled])
y = np.concatenate([y_labelled, np.full(len(x_unlabelled), keras_distill.UNLABELLED)])
distiller.fit(x, y, epochs=10, shuffle=True)
```
"""

import contextlib

import numpy as np
from keras import ops

from keras_distill._keras_internals import get_keras_mask
from keras_distill._keras_internals import set_keras_mask

UNLABELLED = -1
"""The integer class label of a sample that has none (-1)."""


def is_integer_labels(y):
    """Whether `y` is one tensor of integer class labels."""
    dtype = getattr(y, "dtype", None)
    return dtype is not None and "int" in str(dtype)


def holds_unlabelled(y):
    """Whether in-memory labels `y` mark a sample `UNLABELLED`."""
    if not is_integer_labels(y):
        return False
    return bool(np.any(ops.convert_to_numpy(y) == UNLABELLED))


@contextlib.contextmanager
def labelled_only(y, y_pred):
    """Leaves the unlabelled samples out of what Keras computes on `y`.

    Inside the context, `y_pred` carries a Keras mask that is false for
    the samples labelled `UNLABELLED` (and for those its own mask, if any,
    leaves out), so that Keras's losses average over the labelled samples
    and its metrics count them alone. The mask `y_pred` had is restored
    on exit.

    Args:
        y: the batch's labels. Only one tensor of integer class labels can
            mark a sample `UNLABELLED`; other labels pass through.
        y_pred: the student's outputs.

    Yields:
        The labels with `UNLABELLED` replaced by class 0 (any valid class:
        the mask leaves those samples out).
    """
    if not is_integer_labels(y) or isinstance(y_pred, (dict, list, tuple)):
        yield y
        return
    previous = get_keras_mask(y_pred)
    labelled = ops.greater_equal(y, 0)
    if previous is not None:
        labelled = ops.logical_and(
            labelled, ops.reshape(ops.cast(previous, "bool"), ops.shape(labelled))
        )
    set_keras_mask(y_pred, labelled)
    try:
        yield ops.maximum(y, 0)
    finally:
        set_keras_mask(y_pred, previous)
