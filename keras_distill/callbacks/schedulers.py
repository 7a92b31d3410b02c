"""Callbacks that schedule a Distiller's temperatures and loss weights.

They change training only by assigning to non-trainable variables that the
Distiller and its losses own, like `keras.callbacks.LearningRateScheduler`
assigns the optimizer's learning rate. The compiled step reads those
variables, so a new value takes effect on the next step on every backend
(on JAX a Python float would be frozen into the traced step).
"""

import math
import numbers

import keras

UPDATE_FREQUENCIES = ("epoch", "batch")


class _VariableScheduler(keras.callbacks.Callback):
    """Sets some of a Distiller's variables from `schedule(epoch or step)`."""

    log_name = None

    def __init__(self, schedule, update_freq="epoch", verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be a callable taking the epoch (or step) "
                f"index and returning a number; received {schedule!r}."
            )
        if update_freq not in UPDATE_FREQUENCIES:
            raise ValueError(
                f"`update_freq` must be one of {UPDATE_FREQUENCIES}; received "
                f"{update_freq!r}."
            )
        self.schedule = schedule
        self.update_freq = update_freq
        self.verbose = verbose
        self._value = None

    def scheduled_variables(self, distiller):
        """The variables this callback sets; implemented by subclasses."""
        raise NotImplementedError

    def check_value(self, value):
        """Raises a clear error for a value the variables cannot take."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{type(self).__name__}: the schedule returned {value}; it "
                "must return finite numbers >= 0."
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._set(epoch, f"epoch {epoch + 1}")

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_freq == "batch":
            step = int(self.model.optimizer.iterations.numpy())
            self._set(step, f"step {step}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._value is not None:
            logs[self.log_name] = self._value

    def _set(self, index, when):
        value = self.schedule(index)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            try:
                value = float(keras.ops.convert_to_numpy(value))
            except (TypeError, ValueError):
                raise TypeError(
                    f"{type(self).__name__}: the schedule must return a "
                    f"number; it returned {value!r} for index {index}."
                ) from None
        value = float(value)
        self.check_value(value)
        # Accessing `self.model` also reattaches the state of a JAX training
        # loop, so the next step reads the new value.
        for variable in self.scheduled_variables(self.model):
            variable.assign(value)
        self._value = value
        if self.verbose:
            print(f"{type(self).__name__}: {self.log_name} = {value} at {when}.")


def _schedulable(model, callback, kind):
    """`model`'s schedulable variables of `kind`, by name."""
    variables = getattr(model, "schedulable_variables", None)
    if variables is None:
        raise TypeError(
            f"{type(callback).__name__} schedules a keras_distill.Distiller "
            "or MutualLearning (a model with `schedulable_variables()`); it "
            f"was given to the fit of {type(model).__name__}."
        )
    return variables()[kind]


class TemperatureScheduler(_VariableScheduler):
    """Schedules the softmax temperature of a Distiller's losses.

    At the start of every epoch (or every batch), sets the temperature
    variable of each distillation loss that has one to `schedule(index)`,
    and logs the value as `temperature`.

    Args:
        schedule: a function of the epoch index (or of the optimizer step,
            with `update_freq="batch"`) returning a temperature > 0.
        losses: names of the losses to schedule. Defaults to `None`: every
            loss with a temperature.
        update_freq: `"epoch"` or `"batch"`. Defaults to `"epoch"`.
        verbose: print each change. Defaults to 0.

    Example:

    ```python
    # Anneal from T=8 to T=1 over 8 epochs.
    anneal = keras_distill.callbacks.TemperatureScheduler(
        lambda epoch: max(1.0, 8.0 - epoch)
    )
    distiller.fit(x, y, epochs=10, callbacks=[anneal])
    ```
    """

    log_name = "temperature"

    def __init__(self, schedule, losses=None, update_freq="epoch", verbose=0):
        super().__init__(schedule, update_freq, verbose)
        self.losses = None if losses is None else list(losses)

    def check_value(self, value):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"TemperatureScheduler: the schedule returned {value}; a "
                "temperature must be a finite number > 0."
            )

    def scheduled_variables(self, distiller):
        with_temperature = _schedulable(distiller, self, "temperature")
        if not with_temperature:
            names = list(_schedulable(distiller, self, "loss_weight"))[1:]
            raise ValueError(
                f"TemperatureScheduler: none of the Distiller's losses ({names}) "
                "has a temperature."
            )
        if self.losses is None:
            return list(with_temperature.values())
        unknown = [name for name in self.losses if name not in with_temperature]
        if unknown:
            raise ValueError(
                f"TemperatureScheduler: no loss with a temperature is named "
                f"{unknown}; available: {sorted(with_temperature)}."
            )
        return [with_temperature[name] for name in self.losses]


class LossWeightScheduler(_VariableScheduler):
    """Schedules one weight of a Distiller's total loss.

    Sets the student loss weight (`loss="student"`) or the weight of the
    distillation loss of that name to `schedule(index)` at the start of every
    epoch (or batch), and logs it as `<loss>_weight`. Use it for DKD's
    warm-up, or to anneal the student loss weight.

    Args:
        schedule: a function of the epoch index (or optimizer step)
            returning a weight >= 0.
        loss: `"student"`, or the name of a distillation loss.
        update_freq: `"epoch"` or `"batch"`. Defaults to `"epoch"`.
        verbose: print each change. Defaults to 0.

    Example:

    ```python
    # DKD's linear warm-up over the first 20 epochs.
    warm_up = keras_distill.callbacks.LossWeightScheduler(
        lambda epoch: min(1.0, (epoch + 1) / 20), loss="dkd"
    )
    ```
    """

    def __init__(self, schedule, loss, update_freq="epoch", verbose=0):
        super().__init__(schedule, update_freq, verbose)
        if not isinstance(loss, str):
            raise TypeError(
                "LossWeightScheduler: `loss` must be 'student' or the name of "
                f"a distillation loss; received {loss!r}."
            )
        self.loss = loss
        self.log_name = f"{loss}_weight"

    def scheduled_variables(self, distiller):
        weights = _schedulable(distiller, self, "loss_weight")
        if self.loss not in weights:
            raise ValueError(
                f"LossWeightScheduler: the Distiller has no loss named "
                f"{self.loss!r}; available: {list(weights)}."
            )
        return [weights[self.loss]]
