"""The `Distiller`: a `keras.Model` that trains a student from a teacher."""

import os
import threading
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_distill._keras_internals import get_keras_mask
from keras_distill._keras_internals import set_untracked
from keras_distill.losses.base import combined_weights
from keras_distill.taps import ForwardPass
from keras_distill.taps import LayerTaps
from keras_distill.teachers.base import hooks_of
from keras_distill.training import DistillationModel
from keras_distill.training import batch_size_of
from keras_distill.validation import check_augmentation
from keras_distill.validation import check_model
from keras_distill.validation import check_weight
from keras_distill.validation import in_memory
from keras_distill.validation import loss_list
from keras_distill.validation import loss_weights


# How many samples of in-memory data `check_data` runs the models on, once.
_CHECKED_SAMPLES = 64


class _StudentStep(NamedTuple):
    """What `call` hands to `compute_loss`: a pass and the teacher's inputs."""

    student: ForwardPass
    teacher_inputs: object


@keras.saving.register_keras_serializable(package="keras_distill")
class Distiller(DistillationModel):
    """Trains a student model from a frozen teacher with `fit`.

    The total loss of a batch is

        student_loss_weight * student_loss
        + sum_i distillation_loss_weights[i] * distillation_loss_i
        + the student's regularization losses,

    where `student_loss` is the loss given to `compile` on the labels, and
    each distillation loss compares teacher and student. Both weights are
    named because the literature's "alpha" means the student weight in some
    libraries and the distillation weight in others. Unless given, each
    distillation weight is `1 - student_loss_weight`, so the defaults give
    the usual `0.5 * student_loss + 0.5 * distillation_loss`, as
    `keras.distillation.Distiller` does.

    Samples whose integer class label is `keras_distill.UNLABELLED` (-1)
    take part in the distillation losses and not in `student_loss` or the
    compiled metrics, which average over the labelled samples: a transfer
    set of a few labelled and many unlabelled samples trains in one `fit`.

    On every step the teacher runs once, with `training=False`, under
    `stop_gradient`; its weights never change, and the teacher object is not
    modified (its `trainable` flag is left as it was). The exception is a
    self-distillation teacher (`keras_distill.teachers.MovingAverage`,
    `Snapshot`): a copy of the student that training updates from the
    student, never by gradient. The student runs once;
    `call` and `predict` return its outputs. `sample_weight`, `class_weight`
    and padding masks apply to the student loss and to every distillation
    loss. The weights and temperatures are non-trainable variables, so the
    callbacks in `keras_distill.callbacks` can schedule them on every
    backend.

    `fit` and `evaluate` log `loss` (the total), `student_loss`, one entry
    per distillation loss under its name (unweighted; a repeated name gets
    a suffix, `kd_1`, as Keras names layers: `distillation_loss_names`),
    `distillation_loss` (the weighted sum), the compiled metrics of the
    student, `teacher_agreement` (how often the student's top-1 class is
    the teacher's, on the output of the first loss that compares
    predictions) and `total_loss`, the total again under the name
    `keras.distillation` gives it. `student_loss_weight`,
    `distillation_loss_weights` and each loss's `temperature` read as
    numbers and can be set between steps.
    A training step whose gradients are NaN or infinite (a corrupt teacher)
    changes no weight (see `compile`), and `fit`, `evaluate`,
    `train_on_batch` and `test_on_batch` stop with an error that names a
    logged term that is NaN or infinite; a teacher
    that updates between epochs (`Snapshot`) updates in `begin_epoch`,
    which `fit` calls.

    A step passes nothing from `call` to `compute_loss` but through the
    student's outputs: `call` keeps the features its taps recorded with the
    outputs they belong to, and `compute_loss` uses them only for those
    outputs. Given other predictions (`compute_loss(x, y, y_pred)` in a
    custom loop), it computes the student's features for `x` itself.

    The constructor takes the arguments of `keras.distillation.Distiller`,
    so a script written for it runs after changing its import.

    Args:
        teacher: a `keras.Model`, usually trained. One that is not built
            yet is built on the first batch, as Keras builds models.
        student: a `keras.Model` to train; built on the first batch if
            it is not yet.
        distillation_losses: a `keras_distill.DistillationLoss` or a list of
            them (`keras_distill.losses.KD`, `LogitsDistillation`, ...).
        distillation_loss_weights: a weight >= 0 per distillation loss.
            Defaults to `None`: `1 - student_loss_weight` for each.
        student_loss_weight: weight >= 0 of the compiled loss on the labels.
            Defaults to 0.5.
        name: the model's name. Defaults to `"distiller"`.
        augmentation: a Keras layer (e.g. a `keras.Sequential` of
            `RandomTranslation`, `RandomFlip`, ...) or a callable applied to
            each training batch inside the step, so that teacher and student
            see the same randomly augmented view (the "consistent teaching"
            of function matching, Beyer et al. 2022). Evaluation and
            prediction see the data as given. Defaults to `None`.
        **kwargs: other `keras.Model` arguments.

    Example:

    ```python
    distiller = keras_distill.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras_distill.losses.KD(temperature=4.0),
        student_loss_weight=0.1,
        distillation_loss_weights=[0.9],
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    distiller.fit(x_train, y_train, epochs=10)
    distiller.export_student("student.keras")
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses,
        distillation_loss_weights=None,
        student_loss_weight=0.5,
        name="distiller",
        augmentation=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        check_augmentation(augmentation)
        check_model(teacher, "teacher")
        check_model(student, "student")
        if teacher is student:
            raise ValueError(
                "The teacher and the student are the same model object. The "
                "teacher must be a separate model (for example a trained "
                "copy: keras.models.clone_model plus set_weights)."
            )
        losses, names = loss_list(distillation_losses)
        check_weight(student_loss_weight, "student_loss_weight")
        weights = loss_weights(distillation_loss_weights, len(losses), student_loss_weight)

        self.teacher = teacher
        self.student = student
        self.augmentation = augmentation
        set_untracked(self, "_teacher_hooks", hooks_of(teacher))
        # Top-1 agreement is measured on the outputs of the first loss that
        # compares the models' class predictions.
        agreement = next((l for l in losses if l.reads_predictions()), None)
        set_untracked(self, "_agreement_loss", agreement)
        self._set_losses(
            losses, names, weights, student_loss_weight,
            ["student_loss", *names, "distillation_loss"]
            + ([] if agreement is None else ["teacher_agreement"]),
        )
        self._teacher_taps = LayerTaps(
            teacher, [p for l in losses for p in l.tap_paths("teacher")], "teacher"
        )
        self._student_taps = LayerTaps(
            student, [p for l in losses for p in l.tap_paths("student")], "student"
        )
        # The last student pass of each thread (`tf.distribute` runs each
        # replica's step in a thread of its own).
        set_untracked(self, "_steps", threading.local())
        set_untracked(self, "_ready", False)
        set_untracked(self, "_values_checked", False)
        set_untracked(self, "_teacher_checked", False)
        if teacher.built and student.built:
            self._get_ready()
        self.built = True

    def _get_ready(self, inputs=None):
        """Builds what needs the models built, once, before the first step.

        Models that are not built yet are built by calling them on
        `inputs`, the first batch the Distiller sees (symbolic, when `fit`,
        `evaluate` or `predict` infers the shapes first, as Keras does for
        any model); then the models and the losses are checked, and the
        losses built.
        """
        if inputs is not None:
            for model, view in (
                (self.teacher, inputs),
                (self.student, self._teacher_hooks.student_view(inputs)),
            ):
                if not model.built:
                    model(view, training=False)
        self._teacher_hooks.check_student(self.student)
        # The teacher is built, so its variables are fixed; the trainable
        # variable lists, read on every step, filter them out by identity.
        set_untracked(
            self, "_teacher_variable_ids",
            frozenset(id(v) for v in self.teacher.variables),
        )
        for loss in self.distillation_losses:
            loss.validate_model_compatibility(self.teacher, self.student)
        self._prepare_losses()
        set_untracked(self, "_ready", True)

    def _prepare_losses(self):
        """Checks each loss on the models' symbolic passes, and builds it.

        The passes come from Keras's shape inference: no data runs. Where a
        model's input shape is unknown (a subclassed model built without
        one), the checks run when the step is first traced.
        """
        teacher_pass = self._teacher_taps.symbolic()
        student_pass = self._student_taps.symbolic()
        for loss in self.distillation_losses:
            if teacher_pass is None or student_pass is None:
                if not loss.built:
                    raise ValueError(
                        f"{type(loss).__name__} sizes its own layers from the "
                        "models' shapes, which are not known: build the "
                        "teacher and the student by calling them on a batch."
                    )
                continue
            pairs = loss.read(teacher_pass, student_pass)
            for teacher, student in pairs:
                loss.validate_outputs(teacher, student)
            if not loss.built:  # e.g. FitNet's connectors
                loss.build_from_specs([t for t, _ in pairs], [s for _, s in pairs])

    # -- The teacher's variables are never trained ---------------------------

    def _split_off_teacher(self, variables):
        """`variables` without the teacher's, and the teacher's among them."""
        teacher_ids = (
            self._teacher_variable_ids if self._ready
            else frozenset(id(v) for v in self.teacher.variables)
        )
        return (
            [v for v in variables if id(v) not in teacher_ids],
            [v for v in variables if id(v) in teacher_ids],
        )

    # The trainable lists are read on every step: each walks the layers once.
    @property
    def trainable_weights(self):
        return self._split_off_teacher(super().trainable_weights)[0]

    @property
    def non_trainable_weights(self):
        teacher = self._split_off_teacher(super().trainable_weights)[1]
        return super().non_trainable_weights + teacher

    @property
    def trainable_variables(self):
        return self._split_off_teacher(super().trainable_variables)[0]

    @property
    def non_trainable_variables(self):
        teacher = self._split_off_teacher(super().trainable_variables)[1]
        return super().non_trainable_variables + teacher

    # -- `keras.distillation`'s trackers, as views of the logs' metric -------

    @property
    def student_loss_tracker(self):
        """The mean `student_loss` of the logs, read like a
        `keras.metrics.Mean` (`result()`, `reset_state()`)."""
        return self.step_means.entry("student_loss")

    @property
    def distillation_loss_tracker(self):
        """The mean `distillation_loss` of the logs, like `student_loss_tracker`."""
        return self.step_means.entry("distillation_loss")

    @property
    def total_loss_tracker(self):
        """The mean `total_loss` (`loss`) of the logs, like `student_loss_tracker`."""
        return self.step_means.entry("total_loss")

    # -- The step ------------------------------------------------------------

    def call(self, inputs, training=None):
        """Runs the student; returns its outputs.

        The features its taps recorded stay with these outputs, for
        `compute_loss` of the same step, so the student runs once; so does
        the augmented batch, for the teacher.
        """
        if not self._ready:
            self._get_ready(inputs)
        teacher_inputs = inputs
        if training and self.augmentation is not None:
            teacher_inputs = (
                self.augmentation(inputs, training=True)
                if isinstance(self.augmentation, keras.layers.Layer)
                else self.augmentation(inputs)
            )
        student = self._student_taps(
            self._teacher_hooks.student_view(teacher_inputs), training=training
        )
        self._steps.last = _StudentStep(student, teacher_inputs)
        return student.outputs

    def _student_step(self, x, y_pred, training):
        """The student's pass that gave `y_pred`, and the teacher's inputs.

        The pass `call` recorded, when `y_pred` holds its very outputs; for
        other predictions, the student's features computed on `x` (and the
        teacher sees `x` as given).
        """
        step = getattr(self._steps, "last", None)
        self._steps.last = None  # used once; no tensor outlives its step
        if step is not None and _same_tensors(step.student.outputs, y_pred):
            return step
        features = {}
        if self._student_taps.paths:
            view = self._teacher_hooks.student_view(x)
            features = self._student_taps(view, training=training).features
        return _StudentStep(ForwardPass(y_pred, features), x)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if not self._ready:
            self._get_ready(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        step = self._student_step(x, y_pred, training)
        # The student's terms come first, before the teacher runs, so that
        # `self.losses` holds only what the student's forward pass added.
        student_loss = self.label_loss(y, y_pred, sample_weight)
        regularization = self.regularization()

        teacher = self._run_teacher(step.teacher_inputs)
        if training:
            self._teacher_hooks.update_step(self.student)  # e.g. a moving average
        values = [
            loss.from_passes(
                teacher, step.student, labels=y, sample_weight=sample_weight,
                inputs=step.teacher_inputs, training=training,
            )
            for loss in self.distillation_losses
        ]
        distillation_loss = None
        for value, weight in zip(values, self._loss_weights):
            term = weight.variable * value
            distillation_loss = term if distillation_loss is None else distillation_loss + term

        # Each loss is a batch mean, weighted by the batch size in the logs.
        batch_size = batch_size_of(y_pred)
        logged = [student_loss, *values, distillation_loss]
        weights = batch_size
        if self._agreement_loss is not None:
            agreement, count = self._agreement(teacher, step.student, sample_weight)
            logged.append(agreement)
            if count is not None:
                weights = [batch_size] * len(logged) + [count]
        return self.finish_step(
            student_loss, distillation_loss, regularization, logged, weights
        )

    def _run_teacher(self, x):
        """One teacher pass: its outputs and tapped features, without gradient."""
        return ForwardPass(*keras.tree.map_structure(
            ops.stop_gradient, tuple(self._teacher_taps(x, training=False))
        ))

    def _agreement(self, teacher_pass, student_pass, sample_weight):
        """The batch's top-1 agreement, and the weight of the samples it
        averages (`None`: the batch size)."""
        teacher, student = self._agreement_loss.prediction_pair(teacher_pass, student_pass)
        agree = ops.cast(
            ops.equal(ops.argmax(teacher, -1), ops.argmax(student, -1)), "float32"
        )
        weights = combined_weights(agree, sample_weight, get_keras_mask(student))
        if weights is None:
            count = None if len(agree.shape) == 1 else ops.cast(ops.size(agree), "float32")
            return ops.mean(agree), count
        count = ops.sum(weights)
        return ops.divide_no_nan(ops.sum(agree * weights), count), count

    # -- Checks and hooks ------------------------------------------------------

    def check_data(self, x, y=None):
        """Checks in-memory data before it trains or evaluates anything.

        Once, the teacher's weights are checked for NaN and infinite
        values (any data). A teacher that reads the data (`Precomputed`)
        checks it; then, once, each loss checks what it reads of the first samples
        (`DistillationLoss.check_values`: probabilities where logits are
        expected, labels out of range, ...).
        """
        if not self._teacher_checked and self.teacher.built:
            self._check_teacher_weights()
        if not in_memory(x):
            return
        self._teacher_hooks.check_data(x)
        if self._values_checked:
            return
        x = keras.tree.map_structure(lambda a: a[:_CHECKED_SAMPLES], x)
        y = (
            keras.tree.map_structure(lambda a: np.asarray(a[:_CHECKED_SAMPLES]), y)
            if in_memory(y) else None
        )
        if not self._ready:
            self._get_ready(x)
        teacher = self._teacher_taps(x, training=False)
        student = self._student_taps(self._teacher_hooks.student_view(x), training=False)
        for loss in self.distillation_losses:
            for t, s in loss.read(teacher, student):
                loss.check_values(
                    keras.tree.map_structure(ops.convert_to_numpy, t),
                    keras.tree.map_structure(ops.convert_to_numpy, s),
                    y,
                )
        set_untracked(self, "_values_checked", True)

    def _check_teacher_weights(self):
        """Raises when a weight of the teacher is NaN or infinite.

        Checked once, on the weights themselves: a corrupt weight need not
        show in the outputs (TensorFlow's ReLU maps NaN to 0, so a NaN
        kernel before it gives a finite, constant teacher).
        """
        bad = [
            w.path for w in self.teacher.weights
            if "float" in str(w.dtype)
            and not bool(ops.convert_to_numpy(ops.all(ops.isfinite(w))))
        ]
        if bad:
            raise ValueError(
                f"The teacher's weights {bad[:5]}{' ...' if len(bad) > 5 else ''} "
                "hold NaN or infinite values, so its outputs cannot be trusted "
                "even where they are finite. Load the teacher again from its "
                "file, or check the run that trained it."
            )
        set_untracked(self, "_teacher_checked", True)

    def begin_epoch(self, epoch):
        """Lets a teacher (`Snapshot`) or a loss (`CTKD`) that changes
        between epochs update.

        `fit` calls it before each epoch; a loop of `train_on_batch` calls
        it at the start of each of its epochs.

        Args:
            epoch: the epoch about to start, counted from 0.
        """
        super().begin_epoch(epoch)
        self._teacher_hooks.update_epoch(epoch, self.student)

    def updates_per_epoch(self):
        return self._teacher_hooks.updates_per_epoch() or super().updates_per_epoch()

    def non_finite_hint(self, names):
        if any(name.removeprefix("val_") == "student_loss" for name in names):
            return super().non_finite_hint(names)
        return (
            "The loss on the labels is finite, so the distillation terms are "
            "at fault: check the teacher on a batch of the same data "
            "(teacher.predict(x)); its weights may be corrupt, or the inputs "
            "may need the preprocessing the teacher was trained with."
        )

    # -- Saving --------------------------------------------------------------

    def export_student(self, filepath, overwrite=False):
        """Saves the student alone as a `.keras` file.

        The file holds no teacher and no distillation loss: plain
        `keras.saving.load_model(filepath)` loads it.

        Args:
            filepath: path ending in `.keras`.
            overwrite: whether to replace an existing file. Defaults to
                `False`, so that no file is lost by accident.

        Raises:
            ValueError: for another extension, or an existing file when
                `overwrite` is `False`.
        """
        filepath = os.fspath(filepath)
        if not filepath.endswith(".keras"):
            raise ValueError(
                f"export_student writes a `.keras` file; received {filepath!r}."
                " Add the `.keras` extension."
            )
        if os.path.exists(filepath) and not overwrite:
            raise ValueError(
                f"{filepath!r} exists already. Choose another path, or pass "
                "overwrite=True to replace it."
            )
        self.student.save(filepath)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_losses": [
                    keras.saving.serialize_keras_object(loss)
                    for loss in self.distillation_losses
                ],
                "distillation_loss_weights": self.distillation_loss_weights,
                "student_loss_weight": self.student_loss_weight,
                "augmentation": keras.saving.serialize_keras_object(
                    self.augmentation
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        config["distillation_losses"] = [
            keras.saving.deserialize_keras_object(c, custom_objects=custom_objects)
            for c in config["distillation_losses"]
        ]
        config["augmentation"] = keras.saving.deserialize_keras_object(
            config.get("augmentation"), custom_objects=custom_objects
        )
        return cls(**config)


def _same_tensors(a, b):
    """Whether structures `a` and `b` hold the very same tensor objects."""
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))
