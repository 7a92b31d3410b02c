"""What every model that distils shares: its weights, logs, total and checks.

`Distiller` and `MutualLearning` build on `DistillationModel`: the loss
weights as variables (so that callbacks schedule them on every backend),
one `StepMeans` metric for every logged term, the total scaled for the
replicas of `tf.distribute`, and the checks and hooks that run alike in
`fit`, `evaluate`, `train_on_batch` and `test_on_batch`.
"""

import contextlib
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_distill._keras_internals import KeepsLogOrder
from keras_distill._keras_internals import NeverRematerialized
from keras_distill._keras_internals import compiled_loss
from keras_distill._keras_internals import flatten_logs
from keras_distill._keras_internals import log_total_with_terms
from keras_distill._keras_internals import retrace_steps
from keras_distill._keras_internals import scale_loss_for_distribution
from keras_distill._keras_internals import seed_generators
from keras_distill._keras_internals import set_untracked
from keras_distill._keras_internals import skipping_non_finite_steps
from keras_distill._keras_internals import unscale_loss_for_distribution
from keras_distill.labels import holds_unlabelled
from keras_distill.labels import labelled_only
from keras_distill.scalars import Scalar
from keras_distill.step_means import StepMeans
from keras_distill.validation import check_label_loss
from keras_distill.validation import check_weight
from keras_distill.validation import in_memory
from keras_distill.validation import loss_weights


def batch_size_of(outputs):
    """The batch size of `outputs`, as a float32 weight for the logs (a
    Python float where it is static)."""
    first = keras.tree.flatten(outputs)[0]
    if first.shape[0] is not None:
        return float(first.shape[0])
    return ops.cast(ops.shape(first)[0], "float32")


# The keys of the random generators' states among a model's saved variables.
_SEED_STATE = "seed_generator_state_"


class DistillationModel(KeepsLogOrder, NeverRematerialized, keras.Model):
    """Base class of the models that train students by distillation.

    Subclasses call `_set_losses` in their constructor and, in
    `compute_loss`, `label_loss`, `regularization` and `finish_step`. The
    checks run in every training and evaluation entry point, not only in
    `fit`:

    - in-memory data is checked first (`check_data`);
    - after the first batch and every epoch of `fit`, after `evaluate`, and
      after every `train_on_batch` and `test_on_batch`, a logged term that
      is NaN or infinite stops training with an error naming it
      (`check_finite`); losses propagate NaN, so one look at the logs
      covers every tensor that reached them;
    - `fit` calls `begin_epoch(epoch)` before each epoch; a loop of
      `train_on_batch` calls it itself.
    """

    def _set_losses(self, losses, names, weights, student_loss_weight, logged):
        """Keeps the losses, their weights as variables, and the logs' metric.

        Args:
            losses: the distillation losses.
            names: the distinct name each is logged and scheduled under.
            weights: the weight of each in the total.
            student_loss_weight: the weight of the loss on the labels.
            logged: the names of the terms `finish_step` logs after `loss`
                (`total_loss` is logged last, as `keras.distillation` logs it).
        """
        self.distillation_losses = losses
        self.distillation_loss_names = list(names)
        self._student_weight = Scalar(self, "student_loss_weight", student_loss_weight)
        self._loss_weights = [
            Scalar(self, f"{name}_weight", weight) for name, weight in zip(names, weights)
        ]
        self.step_means = StepMeans(["loss", *logged, "total_loss"], name="distiller_logs")
        self._epoch_begun = False
        self._skipped_seen = 0  # skipped steps already reported
        # Whether a batch may hold `UNLABELLED` samples (see `note_labels`).
        set_untracked(self, "_unlabelled_possible", False)

    @property
    def student_loss_weight(self):
        """The weight of the loss on the labels, a float; settable."""
        return self._student_weight.number

    @student_loss_weight.setter
    def student_loss_weight(self, value):
        check_weight(value, "student_loss_weight")
        self._student_weight.assign(value)

    @property
    def distillation_loss_weights(self):
        """The weight of each distillation loss, a list of floats; settable
        (assign a whole list)."""
        return [weight.number for weight in self._loss_weights]

    @distillation_loss_weights.setter
    def distillation_loss_weights(self, values):
        values = loss_weights(values, len(self._loss_weights), self.student_loss_weight)
        for weight, value in zip(self._loss_weights, values):
            weight.assign(value)

    # -- The step's pieces ---------------------------------------------------

    def label_loss(self, y, y_pred, sample_weight):
        """The compiled loss on the labels, a float32 mean over the labelled
        samples (0 without labels; see `keras_distill.labels`)."""
        loss_fn = compiled_loss(self)
        if loss_fn is None or y is None:
            return ops.zeros((), "float32")
        # Keras scales a replica's compiled loss for `tf.distribute`; each
        # term is a plain batch mean here, and the total is scaled once.
        with self._labelled_only(y, y_pred) as y:
            loss = loss_fn(y, y_pred, sample_weight)
        return unscale_loss_for_distribution(ops.cast(loss, "float32"))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The compiled metrics, over the labelled samples only."""
        with self._labelled_only(y, y_pred) as y:
            return super().compute_metrics(x, y, y_pred, sample_weight)

    def _labelled_only(self, y, y_pred):
        if self._unlabelled_possible:
            return labelled_only(y, y_pred)
        return contextlib.nullcontext(y)

    def regularization(self):
        """The sum of the losses the models' forward passes added so far."""
        losses = [ops.cast(ops.sum(loss), "float32") for loss in self.losses]
        return sum(losses) if losses else None

    def finish_step(self, student_loss, distillation_loss, regularization, logged,
                    weights):
        """Logs this step's terms and returns its total, scaled for replicas.

        Args:
            student_loss: the unweighted loss on the labels.
            distillation_loss: the weighted sum of the distillation terms.
            regularization: the regularization losses, or `None`.
            logged: one scalar per name of `_set_losses`'s `logged`.
            weights: the weight of each logged scalar (the batch size, say),
                the total's first, or one weight for all.
        """
        total = self._student_weight.variable * student_loss + distillation_loss
        if regularization is not None:
            total = total + regularization
        if isinstance(weights, (list, tuple)):
            weights = [*weights, weights[0]]
        self.step_means.update_state([total, *logged, total], weights)
        return scale_loss_for_distribution(total)

    # -- Entry points ----------------------------------------------------------

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training; `loss` is the student's loss on the labels.

        Args:
            optimizer: the optimizer of the student (and of any trainable
                part of the losses). Defaults to `"adam"`.
            loss: the student's supervised loss, or a list or dict of them
                for a multi-output student. Required unless
                `student_loss_weight` is 0. Defaults to `None`.
            metrics: metrics of the student's outputs against the labels.
            **kwargs: other `keras.Model.compile` arguments
                (`loss_weights`, `weighted_metrics`, `jit_compile`, ...).

        A step whose gradients are NaN or infinite (a corrupt teacher, an
        overflow) applies no update and leaves the optimizer's state as it
        was; when a logged term is not finite either, `fit` then stops with
        an error naming it. To do
        so the optimizer is wrapped, as Keras wraps it for mixed precision,
        in a `keras.optimizers.LossScaleOptimizer` (of constant scale 1, so
        its finite steps are the optimizer's own): `self.optimizer` is the
        wrapper, and `self.optimizer.inner_optimizer` the one given here.

        Raises:
            ValueError: when `loss` is missing but `student_loss_weight > 0`.
        """
        check_label_loss(loss, self.student_loss_weight, type(self).__name__)
        # A mixed_float16 model's optimizer is wrapped by Keras, in a loss
        # scaling optimizer that skips such steps too.
        if not (self.dtype_policy.name == "mixed_float16"
                and kwargs.get("auto_scale_loss", True)):
            optimizer = skipping_non_finite_steps(optimizer)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        log_total_with_terms(self)  # `loss` is logged with the other terms

    def compile_from_config(self, config):
        """Compiles from a saved compile config (used by `load_model`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto",
            callbacks=None, **kwargs):
        """`keras.Model.fit`, with the checks and epoch hooks of every step.

        Before training, in-memory data is checked; before each epoch,
        `begin_epoch` runs; after the first batch and each epoch, a logged
        term that is NaN or infinite stops `fit` with a `ValueError` that
        names it.
        """
        self.check_data(x, y)
        self.note_labels(x, y)
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)):
            self.note_labels(*validation[:2])
        elif validation is not None:
            self.note_labels(validation, None)
        callbacks = [*(callbacks or []), _EveryEpoch()]
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, return_dict=False, **kwargs):
        """`keras.Model.evaluate`, with the data and finiteness checks of `fit`."""
        self.check_data(x, y)
        self.note_labels(x, y)
        logs = super().evaluate(x, y, *args, return_dict=True, **kwargs)
        self.check_finite(logs, "evaluate")
        return logs if return_dict else flatten_logs(self, logs)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """`keras.Model.train_on_batch`, with the checks of `fit`'s steps.

        In a loop of `train_on_batch`, call `begin_epoch(epoch)` at the
        start of each epoch when the teacher updates per epoch
        (`keras_distill.teachers.Snapshot`); it warns once otherwise.
        """
        self.check_data(x, y)
        self.note_labels(x, y)
        if not self._epoch_begun and self.updates_per_epoch():
            warnings.warn(
                f"{type(self).__name__}.train_on_batch: the teacher or a loss "
                "updates at the start of each epoch, and no epoch has begun; call "
                "begin_epoch(epoch) at the start of each epoch of the loop.",
                stacklevel=2,
            )
            self._epoch_begun = True  # warned once
        logs = super().train_on_batch(
            x, y, sample_weight=sample_weight, class_weight=class_weight,
            return_dict=True,
        )
        self.check_finite(logs, "train_on_batch")
        return logs if return_dict else flatten_logs(self, logs)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """`keras.Model.test_on_batch`, with the checks of `evaluate`."""
        self.check_data(x, y)
        self.note_labels(x, y)
        logs = super().test_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        self.check_finite(logs, "test_on_batch")
        return logs if return_dict else flatten_logs(self, logs)

    # -- Hooks and checks ------------------------------------------------------

    def begin_epoch(self, epoch):
        """Runs what changes between epochs (a `Snapshot` teacher's copy,
        a loss's curriculum).

        `fit` calls it before each epoch; a custom loop calls it itself.

        Args:
            epoch: the epoch about to start, counted from 0.
        """
        self._epoch_begun = True
        for loss in self.distillation_losses:
            loss.begin_epoch(epoch)

    def updates_per_epoch(self):
        """Whether `begin_epoch` changes anything: whether a loss does."""
        return any(loss.updates_per_epoch() for loss in self.distillation_losses)

    def check_data(self, x, y=None):
        """Raises a clear error for in-memory data that cannot be distilled.

        Args:
            x: the inputs given to `fit`, `evaluate`, ...
            y: the labels, or `None`.

        The default accepts any data.
        """

    def note_labels(self, x, y):
        """Leaves `UNLABELLED` samples out of the label loss from now on
        when `y` may hold some.

        In-memory integer labels are looked at; the labels of a dataset or
        generator may hold `UNLABELLED` anywhere. Until some data may, the
        step computes the label loss and metrics without a mask: the same
        numbers with fewer operations. Once it may, the compiled steps are
        traced again, with the mask.

        Args:
            x: the inputs given to `fit`, `evaluate`, ... (`None`: nothing
                is learnt about the labels).
            y: the labels, or `None`.
        """
        if self._unlabelled_possible or x is None:
            return
        if in_memory(x) and not holds_unlabelled(y):
            return
        set_untracked(self, "_unlabelled_possible", True)
        retrace_steps(self)

    def check_finite(self, logs, when="training"):
        """Raises a `ValueError` naming the logged terms that are not finite.

        Args:
            logs: a dict of logged values (`fit`'s epoch logs, the result of
                `evaluate(..., return_dict=True)`, or of
                `get_metrics_result()` in a custom loop).
            when: what produced them, for the message.

        Raises:
            ValueError: when the total or one of the distiller's terms is
                NaN or infinite, or when the optimizer skipped a step whose
                gradients were not finite since the last check.
        """
        names = {"loss", *self.step_means.names}
        bad = [
            name for name in logs
            if name.removeprefix("val_") in names
            and not math.isfinite(float(np.asarray(logs[name])))
        ]
        if bad:
            raise ValueError(
                f"The logged {', '.join(bad)} were NaN or infinite during "
                f"{when}; training on them would turn the student's weights "
                f"into NaN. {self.non_finite_hint(bad)}"
            )
        skipped = getattr(self.optimizer, "skipped_steps", None)
        skipped = 0 if skipped is None else int(ops.convert_to_numpy(skipped))
        if skipped > self._skipped_seen:
            new, self._skipped_seen = skipped - self._skipped_seen, skipped
            raise ValueError(
                f"{new} training step(s) had NaN or infinite gradients during "
                f"{when}, while every logged term was finite; they were "
                "skipped, so the weights are as they were before them. A "
                "term whose value is finite has a gradient that is not: a "
                "square root, power or norm at exactly 0, say. Train on each "
                "distillation loss alone to find it."
            )

    def non_finite_hint(self, names):
        """What to check when the logged `names` are not finite."""
        return (
            "Check the data (NaN or infinite inputs or labels), the learning "
            "rate and the loss weights."
        )

    # -- Saving: the random generators' states travel with the weights -------

    def save_own_variables(self, store):
        """Saves the loss weights, and the state of every random generator
        of the models (Dropout's, the augmentation's), which Keras does not
        save: a training run resumed from the file (`load_model`, or
        `keras.callbacks.BackupAndRestore`) draws the masks the
        uninterrupted run would have drawn."""
        super().save_own_variables(store)
        for i, generator in enumerate(seed_generators(self)):
            store[f"{_SEED_STATE}{i}"] = ops.convert_to_numpy(generator.state)

    def load_own_variables(self, store):
        """Loads what `save_own_variables` saved (a file saved without the
        generators' states, by an earlier version, loads without them)."""
        states = [key for key in store.keys() if key.startswith(_SEED_STATE)]
        super().load_own_variables(
            {key: store[key] for key in store.keys() if key not in states}
        )
        generators = seed_generators(self)
        if len(states) == len(generators):
            for i, generator in enumerate(generators):
                generator.state.assign(np.asarray(store[f"{_SEED_STATE}{i}"]))

    def schedulable_variables(self):
        """The variables `keras_distill.callbacks` schedule, by kind and name.

        Returns:
            `{"loss_weight": {"student": variable, "<loss name>": variable,
            ...}, "temperature": {"<loss name>": variable, ...}}`: each
            loss's weight in the total, and each temperature a loss has.
        """
        names = self.distillation_loss_names
        weights = {"student": self._student_weight.variable}
        weights.update(
            (name, weight.variable) for name, weight in zip(names, self._loss_weights)
        )
        temperatures = {
            name: loss.schedulable_variables()["temperature"]
            for name, loss in zip(names, self.distillation_losses)
            if "temperature" in loss.schedulable_variables()
        }
        return {"loss_weight": weights, "temperature": temperatures}


class _EveryEpoch(keras.callbacks.Callback):
    """`fit`'s part of the checks: epoch hooks and finite logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.begin_epoch(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and logs:
            self.model.check_finite(logs, "the first batch")

    def on_epoch_end(self, epoch, logs=None):
        self.model.check_finite(logs or {}, f"epoch {epoch + 1}")
