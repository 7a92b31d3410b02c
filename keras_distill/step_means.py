"""One metric for the scalars a distiller logs on every training step."""

import keras
from keras import ops

_TINY = 1e-30


class StepMeans(keras.metrics.Metric):
    """Weighted means of several logged scalars, kept in one metric.

    A `Distiller` logs a handful of numbers on every step: the student's
    loss, each distillation loss, their weighted total and the teacher
    agreement. As one `keras.metrics.Mean` each, every number costs its own
    few operations to update and to read on every step; on a backend that
    runs eagerly (PyTorch) that is time comparable to a small model's whole
    loss. Here all of them are updated with two vector additions and read
    with one division. `result()` returns a dict, so each number is logged
    under its own name, in the order of `names`.

    Each entry's result is `sum(values * weights) / sum(weights)` over the
    updates since the last reset (0 while its weights sum to 0), as for
    `keras.metrics.Mean`.

    Args:
        names: the names the scalars are logged under.
        name: the metric's own name, which is not logged. Defaults to
            `"step_means"`.
        dtype: the dtype of the sums. Defaults to `"float32"`.

    Example:

    ```python
    means = StepMeans(["student_loss", "kd"])
    means.update_state([0.5, 2.0], [32.0, 32.0])  # batch means, batch sizes
    means.update_state([1.0, 1.0], [16.0, 16.0])
    means.result()  # {"student_loss": 0.667, "kd": 1.667}
    ```
    """

    def __init__(self, names, name="step_means", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(
                f"StepMeans needs distinct names to log under; received "
                f"{self.names}."
            )
        shape = (len(self.names),)
        self.total = self.add_variable(shape, initializer="zeros", name="total")
        self.count = self.add_variable(shape, initializer="zeros", name="count")

    def update_state(self, values, weights):
        """Adds one value and its weight per name.

        Args:
            values: a list of scalars, one per name: each a mean (of a
                batch, say).
            weights: the weight of each value (the number of samples it
                averages, say): a list with one scalar per name, or one
                scalar for all.
        """
        if isinstance(weights, (list, tuple)):
            weights = ops.stack([ops.cast(w, self.dtype) for w in weights])
        values = ops.stack([ops.cast(v, self.dtype) for v in values])
        self.total.assign_add(values * weights)
        self.count.assign_add(weights)

    def result(self):
        # A total is 0 wherever its count is: the floor only spares 0 / 0.
        means = self.total / ops.maximum(self.count, _TINY)
        return dict(zip(self.names, ops.unstack(means)))

    def entry(self, name):
        """One entry, read like a `keras.metrics.Mean` of its own.

        Args:
            name: one of `names`.

        Returns:
            An object with the entry's `name`, `result()` (its mean, a
            scalar tensor) and `reset_state()` (which resets it alone).
        """
        if name not in self.names:
            raise ValueError(f"No entry {name!r}; the entries are {self.names}.")
        return _Entry(self, name)

    def get_config(self):
        return {"names": self.names, "name": self.name, "dtype": self.dtype}


class _Entry:
    """One entry of a `StepMeans`, with the reading half of a metric's API."""

    def __init__(self, means, name):
        self._means = means
        self.name = name

    def result(self):
        return self._means.result()[self.name]

    def reset_state(self):
        others = ops.cast(
            ops.not_equal(ops.arange(len(self._means.names)),
                          self._means.names.index(self.name)),
            self._means.dtype,
        )
        self._means.total.assign(self._means.total * others)
        self._means.count.assign(self._means.count * others)
