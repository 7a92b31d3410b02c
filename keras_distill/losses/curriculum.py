"""Curriculum temperature: KD whose temperature is learnt against the student.

CTKD (Li et al., AAAI 2023) makes the temperature a trained parameter
behind a gradient-reversal layer: the student descends the KD loss while
the temperature ascends it, making the task harder for the student as it
learns. The reversal's strength grows from 0 to its maximum over the first
epochs along a cosine (easy to hard). One objective, one optimizer: the
temperature's parameter is one of the Distiller's trainable weights.
"""

import math

import keras
from keras import ops

from keras_distill.losses.response import KD
from keras_distill.losses.response import kd
from keras_distill.reversal import gradient_reversal
from keras_distill.scalars import Scalar


def curriculum_reversal(epoch, epochs=10, maximum=1.0):
    """The strength of CTKD's gradient reversal at an epoch (from 0).

    `maximum * (1 - cos(pi * e / epochs)) / 2` with `e = min(epoch + 1,
    epochs)`: the authors' cosine schedule, whose first epoch (their epoch
    1) already reverses slightly, reaching `maximum` at epoch `epochs`.

    Args:
        epoch: the epoch, counted from 0.
        epochs: the epochs of the curriculum. Defaults to 10 (CIFAR-100 in
            the paper; 5 on ImageNet).
        maximum: the final strength. Defaults to 1.

    Returns:
        A float in `[0, maximum]`.
    """
    reached = min(epoch + 1, epochs)
    return maximum * (1.0 - math.cos(math.pi * reached / epochs)) / 2.0


@keras.saving.register_keras_serializable(package="keras_distill")
class CTKD(KD):
    """KD with a curriculum temperature, learnt adversarially (CTKD).

    The temperature is `low + (high - low) * sigmoid(theta)`, `theta` a
    trainable weight of this loss (so of the Distiller). Its gradient
    passes a gradient-reversal layer of strength `curriculum_reversal(epoch)`:
    the temperature moves to make the KD loss larger, more so as training
    goes on, while the student minimises it. The Distiller sets the
    strength before each epoch (in a loop of `train_on_batch`, call
    `distiller.begin_epoch(epoch)`). Read the temperature it has
    reached as `loss.temperature`.

    The authors' defaults: `theta` starts at 1 (`T = 1 + 20 sigmoid(1)`,
    about 15.6), in `(1, 21)`, with a 10-epoch curriculum; the KD loss and
    its `T^2` factor read the learnt temperature.

    Args:
        teacher: the teacher's class scores, as in `KD`. Defaults to `None`.
        student: the student's class scores. Defaults to `None`.
        temperature: the starting temperature, inside `temperature_range`.
            Defaults to `None`: the authors' `1 + 20 sigmoid(1)`.
        temperature_range: `(low, high)`, the temperatures it may take.
            Defaults to `(1.0, 21.0)`.
        curriculum_epochs: the epochs over which the reversal grows to
            `max_reversal`. Defaults to 10.
        max_reversal: the reversal's final strength. Defaults to 1.
        divergence: as in `KD`. Defaults to `"forward"`.
        standardize: as in `KD` (z-scored logits). Defaults to `False`.
        input_mask: as in `KD`. Defaults to `None`.
        name: the loss's name in the logs. Defaults to `"ctkd"`.
        **kwargs: `KD`'s other arguments (`teacher_from_logits`, ...).

    Example:

    ```python
    distiller = keras_distill.Distiller(
        teacher, student, keras_distill.losses.CTKD(), student_loss_weight=0.1
    )
    distiller.compile("adam", loss)
    distiller.fit(x, y, epochs=30)
    print(distiller.distillation_losses[0].temperature)
    ```

    Reference:
        Li, Li, Yang, Zhang, Zhang, Cheng and Yang, "Curriculum Temperature
        for Knowledge Distillation", AAAI 2023.
    """

    def __init__(
        self,
        teacher=None,
        student=None,
        *,
        temperature=None,
        temperature_range=(1.0, 21.0),
        curriculum_epochs=10,
        max_reversal=1.0,
        divergence="forward",
        standardize=False,
        input_mask=None,
        name=None,
        **kwargs,
    ):
        low, high = (float(t) for t in temperature_range)
        if not 0 < low < high:
            raise ValueError(
                "CTKD: `temperature_range` must be (low, high) with "
                f"0 < low < high; received {temperature_range!r}."
            )
        if int(curriculum_epochs) != curriculum_epochs or curriculum_epochs < 1:
            raise ValueError(
                "CTKD: `curriculum_epochs` must be a whole number of epochs >= 1; "
                f"received {curriculum_epochs!r}."
            )
        if not max_reversal >= 0:
            raise ValueError(
                f"CTKD: `max_reversal` must be >= 0; received {max_reversal!r}."
            )
        self.temperature_range = (low, high)
        self.curriculum_epochs = int(curriculum_epochs)
        self.max_reversal = float(max_reversal)
        if temperature is None:
            temperature = low + (high - low) / (1.0 + math.exp(-1.0))
        super().__init__(
            teacher, student, temperature=temperature, divergence=divergence,
            standardize=standardize, input_mask=input_mask, name=name, **kwargs,
        )

    def _add_temperature(self, temperature):
        """The learnt temperature's parameter, and the reversal's strength."""
        self._temperature_logit = self.add_weight(
            shape=(), initializer="zeros", trainable=True, name="temperature_logit"
        )
        self._reversal = Scalar(self, "reversal", curriculum_reversal(
            0, self.curriculum_epochs, self.max_reversal
        ))
        self.temperature = temperature

    @property
    def temperature(self):
        """The current temperature, a float; assigning one sets `theta`."""
        low, high = self.temperature_range
        theta = float(ops.convert_to_numpy(self._temperature_logit))
        return low + (high - low) / (1.0 + math.exp(-theta))

    @temperature.setter
    def temperature(self, value):
        low, high = self.temperature_range
        if not low < value < high:
            raise ValueError(
                f"CTKD: the temperature must lie inside temperature_range "
                f"({low}, {high}); received {value!r}."
            )
        self._temperature_logit.assign(math.log((value - low) / (high - value)))

    @property
    def temperature_variable(self):
        raise AttributeError(
            "CTKD learns its temperature: read `temperature` (a float) or "
            "`learnt_temperature()` (a tensor); TemperatureScheduler does "
            "not schedule it."
        )

    @property
    def reversal(self):
        """The current strength of the gradient reversal, a float."""
        return self._reversal.number

    def schedulable_variables(self):
        return {}

    def updates_per_epoch(self):
        return True

    def begin_epoch(self, epoch):
        self._reversal.assign(
            curriculum_reversal(epoch, self.curriculum_epochs, self.max_reversal)
        )

    def learnt_temperature(self):
        """The temperature as a tensor, behind the gradient reversal."""
        low, high = self.temperature_range
        theta = gradient_reversal(self._temperature_logit, self._reversal.variable)
        return low + (high - low) * ops.sigmoid(theta)

    def per_sample(self, context):
        return kd(
            context.teacher,
            context.student,
            self.learnt_temperature(),
            self.divergence,
            self.teacher_from_logits,
            self.student_from_logits,
            self.standardize,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature_range=list(self.temperature_range),
            curriculum_epochs=self.curriculum_epochs,
            max_reversal=self.max_reversal,
        )
        return config
