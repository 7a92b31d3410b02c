"""Hyperparameters that read as Python numbers and live in variables.

A loss weight or a temperature must be a variable, so that the callbacks of
`keras_distill.callbacks` change it inside compiled steps on every backend;
a script written for `keras.distillation` reads it as a number
(`distiller.student_loss_weight == 0.5`, `json.dumps(loss.temperature)`).
A `Scalar` is both: its `variable` is what the step reads, and `number` is
the Python float a script sees.
"""

import keras
import numpy as np
from keras import ops

from keras_distill._keras_internals import in_traced_step


class Scalar:
    """A non-trainable float32 scalar variable of a layer, read as a float.

    `number` is the value last set from Python (the constructor's or
    `assign`'s) while the variable still holds it, so that 0.7 reads back
    as 0.7 and not as its float32 rounding; once something else (a
    schedule) assigns the variable, `number` is the variable's value.

    Args:
        layer: the layer that owns the variable (and saves it).
        name: the variable's name.
        value: the initial value, a Python number.
    """

    def __init__(self, layer, name, value):
        self.variable = layer.add_weight(
            name=name,
            shape=(),
            initializer=keras.initializers.Constant(float(value)),
            trainable=False,
            dtype="float32",
        )
        self._set = float(value)

    @property
    def number(self):
        """The current value, a Python float.

        Inside a traced step, where the variable has no value yet, the
        value last set from Python: a constant of that step.
        """
        if in_traced_step():
            return self._set
        value = float(ops.convert_to_numpy(self.variable))
        return self._set if np.float32(self._set) == np.float32(value) else value

    def assign(self, value):
        """Sets the value from Python."""
        self.variable.assign(float(value))
        self._set = float(value)
