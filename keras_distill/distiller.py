"""The `Distiller`: a `keras.Model` that trains a student from a teacher."""

import math
import numbers
import os

import keras
from keras import ops

from keras_distill._keras_internals import get_keras_mask
from keras_distill._keras_internals import scale_loss_for_distribution
from keras_distill._keras_internals import unscale_loss_for_distribution
from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.base import combined_weights
from keras_distill.step_means import StepMeans
from keras_distill.student_copies import FollowStudent
from keras_distill.student_copies import StudentCopy
from keras_distill.taps import LayerTaps


@keras.saving.register_keras_serializable(package="keras_distill")
class Distiller(keras.Model):
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
    per distillation loss under its name (unweighted), `distillation_loss`
    (the weighted sum), the compiled metrics of the student, and
    `teacher_agreement`: how often the student's top-1 class is the
    teacher's, on the output of the first loss that compares predictions.

    The constructor takes the arguments of `keras.distillation.Distiller`,
    so a script written for it runs after changing its import.

    Args:
        teacher: a built `keras.Model`, usually trained.
        student: a built `keras.Model` to train.
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
        if augmentation is not None and not callable(augmentation):
            raise TypeError(
                "`augmentation` must be a Keras layer or a callable applied to "
                f"each training batch; received {augmentation!r}."
            )
        check_model(teacher, "teacher")
        check_model(student, "student")
        if teacher is student:
            raise ValueError(
                "The teacher and the student are the same model object. The "
                "teacher must be a separate model (for example a trained "
                "copy: keras.models.clone_model plus set_weights)."
            )
        if isinstance(teacher, StudentCopy):
            teacher.check_student(student)
        losses = _loss_list(distillation_losses)
        check_weight(student_loss_weight, "student_loss_weight")
        weights = _loss_weights(
            distillation_loss_weights, len(losses), student_loss_weight
        )

        self.teacher = teacher
        self.student = student
        self.augmentation = augmentation
        # The teacher is built, so its variables are fixed; the trainable
        # variable lists, read on every step, filter them out by identity.
        self._teacher_variable_ids = frozenset(id(v) for v in teacher.variables)
        self.distillation_losses = losses
        self.student_loss_weight = weight_variable(
            self, "student_loss_weight", student_loss_weight
        )
        self.distillation_loss_weights = [
            weight_variable(self, f"{loss.name}_weight", weight)
            for loss, weight in zip(losses, weights)
        ]
        self._teacher_nonfinite = weight_variable(self, "teacher_nonfinite", 0.0)

        for loss in losses:
            loss.validate_model_compatibility(teacher, student)
        self._teacher_taps = LayerTaps(
            teacher, [p for l in losses for p in l.teacher_layers()], "teacher"
        )
        self._student_taps = LayerTaps(
            student, [p for l in losses for p in l.student_layers()], "student"
        )
        object.__setattr__(self, "_student_features", {})
        object.__setattr__(self, "_augmented_inputs", None)
        self._check_symbolic_outputs()
        for loss in losses:
            if not loss.built:  # e.g. FitNet's connectors, sized from the taps
                loss.build(
                    self._teacher_taps.feature_shapes(),
                    self._student_taps.feature_shapes(),
                )

        # Top-1 agreement is measured on the outputs of the first loss that
        # compares the models' class predictions.
        self._agreement_index = next(
            (i for i, loss in enumerate(losses) if compares_outputs(loss)), None
        )
        self.step_means = StepMeans(
            ["student_loss", *(loss.name for loss in losses), "distillation_loss"]
            + ([] if self._agreement_index is None else ["teacher_agreement"]),
            name="distiller_logs",
        )
        self.built = True

    def _check_symbolic_outputs(self):
        """Runs each loss's output checks on symbolic outputs, when known."""
        teacher_out = _symbolic_outputs(self.teacher)
        student_out = _symbolic_outputs(self.student)
        if teacher_out is None or student_out is None:
            return  # subclassed models: checked when the step is traced
        for loss in self.distillation_losses:
            if compares_outputs(loss):
                loss.validate_outputs(*loss.prediction_pair(teacher_out, student_out))

    # -- The teacher's variables are never trained ---------------------------

    def _split_off_teacher(self, variables):
        """`variables` without the teacher's, and the teacher's among them."""
        teacher_ids = self._teacher_variable_ids
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

    # -- Training ------------------------------------------------------------

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

        Raises:
            ValueError: when `loss` is missing but `student_loss_weight > 0`.
        """
        check_label_loss(loss, self.student_loss_weight, type(self).__name__)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Compiles from a saved compile config (used by `load_model`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        """Runs the student; returns its outputs.

        The outputs of the layers the losses tap are kept for `compute_loss`
        of the same step, so the student runs once; so is the augmented
        batch, for the teacher.
        """
        augmented = None
        if training and self.augmentation is not None:
            augmented = (
                self.augmentation(inputs, training=True)
                if isinstance(self.augmentation, keras.layers.Layer)
                else self.augmentation(inputs)
            )
            inputs = augmented
        object.__setattr__(self, "_augmented_inputs", augmented)
        # Teachers that read their own part of the data (CrossModal,
        # Precomputed) say what the student sees of it.
        if hasattr(self.teacher, "student_view"):
            inputs = self.teacher.student_view(inputs)
        outputs, features = self._student_taps(inputs, training=training)
        object.__setattr__(self, "_student_features", features)
        return outputs

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        # Kept until this step's `call` replaces them: a backend may run
        # `compute_loss` twice on one forward pass (torch's shape inference
        # retries on real tensors after an error).
        student_features = self._student_features
        batch_size = ops.shape(keras.tree.flatten(y_pred)[0])[0]

        # The student's terms come first, before the teacher runs, so that
        # `self.losses` holds only what the student's forward pass added.
        # Every term is a mean over this replica's batch; the total is scaled
        # for the replicas once, at the end (`tf.distribute` sums gradients).
        student_loss = ops.zeros((), "float32")
        if self._compile_loss is not None and y is not None:
            student_loss = unscale_loss_for_distribution(
                ops.cast(self._compile_loss(y, y_pred, sample_weight), "float32")
            )
        regularization = [ops.cast(ops.sum(l), "float32") for l in self.losses]

        if self._augmented_inputs is not None:  # this training step's view
            x = self._augmented_inputs
        teacher_outputs, teacher_features = self._run_teacher(x)
        if training and isinstance(self.teacher, StudentCopy):
            self.teacher.follow_step(self.student)  # e.g. a moving average
        distillation_loss = ops.zeros((), "float32")
        values = []
        for loss, weight in zip(
            self.distillation_losses, self.distillation_loss_weights
        ):
            # Losses with state of their own (CRD's queues) update it only
            # in training steps.
            stateful = {"training": training} if loss.has_training_state else {}
            value = loss.compute_loss(
                teacher_features if loss.teacher_layers() else teacher_outputs,
                student_features if loss.student_layers() else y_pred,
                labels=y,
                sample_weight=sample_weight,
                inputs=x,
                **stateful,
            )
            value = ops.cast(value, "float32")
            if len(value.shape) != 0:
                raise ValueError(
                    f"{type(loss).__name__}.compute_loss returned a tensor of "
                    f"shape {value.shape}; a distillation loss must return a "
                    "scalar (reduce it, e.g. with keras.ops.mean)."
                )
            values.append(value)
            distillation_loss = distillation_loss + weight * value

        # Each loss is a batch mean, weighted by the batch size in the logs.
        values = [student_loss, *values, distillation_loss]
        weights = [ops.cast(batch_size, "float32")] * len(values)
        if self._agreement_index is not None:
            agreement, count = self._agreement(teacher_outputs, y_pred, sample_weight)
            values.append(agreement)
            weights.append(count)
        self.step_means.update_state(values, weights)
        total = self.student_loss_weight * student_loss + distillation_loss
        if regularization:
            total = total + sum(regularization)
        return scale_loss_for_distribution(total)

    def _run_teacher(self, x):
        """One teacher pass: its outputs and tapped features, without gradient."""
        outputs, features = self._teacher_taps(x, training=False)
        outputs = keras.tree.map_structure(ops.stop_gradient, outputs)
        features = keras.tree.map_structure(ops.stop_gradient, features)
        finite = [
            ops.all(ops.isfinite(t))
            for t in keras.tree.flatten((outputs, features))
            if keras.backend.is_float_dtype(t.dtype)  # not the attention masks
        ]
        nonfinite = 1.0 - ops.cast(ops.all(ops.stack(finite)), "float32")
        self._teacher_nonfinite.assign(
            ops.maximum(self._teacher_nonfinite, nonfinite)
        )
        return outputs, features

    def _agreement(self, teacher_outputs, student_outputs, sample_weight):
        """The batch's top-1 agreement and the weight of the samples it averages."""
        loss = self.distillation_losses[self._agreement_index]
        teacher, student = loss.prediction_pair(teacher_outputs, student_outputs)
        agree = ops.cast(
            ops.equal(ops.argmax(teacher, -1), ops.argmax(student, -1)), "float32"
        )
        weights = combined_weights(agree, sample_weight, get_keras_mask(student))
        if weights is None:
            return ops.mean(agree), ops.size(agree)
        count = ops.sum(weights)
        return ops.divide_no_nan(ops.sum(agree * weights), count), count

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        **kwargs,
    ):
        """`keras.Model.fit`, also checking that the teacher's outputs are finite.

        The training step sets a flag when the teacher's outputs hold NaN or
        infinity; it is read after the first batch and at the end of each
        epoch, and `fit` stops with a `ValueError` saying so instead of
        training the student on garbage. With a `Snapshot` teacher, the
        teacher takes the student's weights at the start of its epochs.
        """
        self._check_data(x)
        callbacks = [*(callbacks or []), _TeacherOutputCheck()]
        if isinstance(self.teacher, StudentCopy):
            callbacks.append(FollowStudent())
        return super().fit(
            x, y, batch_size, epochs, verbose, callbacks, **kwargs
        )

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, with the data checks of `fit`."""
        self._check_data(x)
        return super().evaluate(x, y, *args, **kwargs)

    def _flatten_metrics_in_order(self, logs):
        # Keras's order for the lists of `evaluate`, `train_on_batch` and
        # `test_on_batch` puts the keys of a metric that returns a dict
        # last and sorted. The Distiller's logs (one such metric) keep
        # their own order, where Keras put the first of them.
        keys = super()._flatten_metrics_in_order({key: key for key in logs})
        keys = [keys] if isinstance(keys, str) else keys
        ours = [key for key in self.step_means.names if key in logs]
        if ours:
            at = min(keys.index(key) for key in ours)
            rest = [key for key in keys if key not in ours]
            keys = rest[:at] + ours + rest[at:]
        results = [logs[key] for key in keys]
        return results[0] if len(results) == 1 else results

    def _check_data(self, x):
        """Lets a teacher that reads the data (Precomputed) check it first."""
        if hasattr(self.teacher, "check_data") and _in_memory(x):
            self.teacher.check_data(x)

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
                "distillation_loss_weights": [
                    float(w.numpy()) for w in self.distillation_loss_weights
                ],
                "student_loss_weight": float(self.student_loss_weight.numpy()),
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


class _TeacherOutputCheck(keras.callbacks.Callback):
    """Stops `fit` with a clear error when the teacher's outputs are not finite."""

    def on_train_begin(self, logs=None):
        self.model._teacher_nonfinite.assign(0.0)

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self._check("the first batch")

    def on_epoch_end(self, epoch, logs=None):
        self._check(f"epoch {epoch + 1}")

    def _check(self, when):
        if float(self.model._teacher_nonfinite.numpy()) > 0:
            raise ValueError(
                f"The teacher produced NaN or infinite outputs during {when}; "
                "distilling them would train the student on garbage. Check "
                "the teacher on a batch of the same data (teacher.predict(x)): "
                "its weights may be corrupt, or the inputs may need the "
                "preprocessing the teacher was trained with."
            )


def check_model(model, role):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"The {role} must be a keras.Model; received an object of type "
            f"{type(model).__name__}. Wrap layers in keras.Sequential or a "
            "Functional model."
        )
    if not model.built:
        raise ValueError(
            f"The {role} {model.name!r} is not built, so its weights do not "
            f"exist yet. Build it first: call it on a batch ({role}(x)) or "
            f"call {role}.build(input_shape)."
        )


# What the Distiller logs besides each distillation loss's value.
_OTHER_LOGS = ("loss", "student_loss", "distillation_loss", "teacher_agreement")


def _loss_list(distillation_losses):
    if distillation_losses is None:
        raise ValueError(
            "distillation_losses is None; pass a distillation loss such as "
            "keras_distill.losses.KD(temperature=4.0), or a list of them."
        )
    losses = (
        list(distillation_losses)
        if isinstance(distillation_losses, (list, tuple))
        else [distillation_losses]
    )
    if not losses:
        raise ValueError("distillation_losses is empty; pass at least one loss.")
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            from keras_distill import losses as loss_module

            raise TypeError(
                f"{loss!r} is not a keras_distill distillation loss. Use one "
                f"of keras_distill.losses ({', '.join(loss_module.CLASSES)}), "
                "or subclass keras_distill.DistillationLoss. A Keras loss "
                "such as 'mse' goes inside FeatureDistillation(loss='mse'); "
                "the student's own loss goes to compile(loss=...)."
            )
    names = [loss.name for loss in losses]
    taken = sorted(set(names) & set(_OTHER_LOGS))
    if taken:
        raise ValueError(
            f"A distillation loss is named {taken[0]!r}, which the Distiller "
            f"logs already ({', '.join(_OTHER_LOGS)}); give it another "
            "`name=`, e.g. KD(name='kd_logits')."
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Several distillation losses are named {duplicates}; their values "
            "are logged by name, so give each a distinct `name=`, e.g. "
            "KD(name='kd_logits')."
        )
    return losses


def weight_variable(model, name, value):
    """A non-trainable float32 scalar of `model`, for callbacks to schedule."""
    return model.add_weight(
        name=name,
        shape=(),
        initializer=keras.initializers.Constant(float(value)),
        trainable=False,
        dtype="float32",
    )


def check_label_loss(loss, student_loss_weight, owner):
    """Raises unless a loss on the labels is given where it has weight."""
    weight = float(student_loss_weight.numpy())
    if loss is None and weight > 0:
        raise ValueError(
            f"compile() got no `loss` on the labels, but {owner}'s "
            f"student_loss_weight is {weight}. Pass it, e.g. compile(loss="
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)), "
            f"or build the {owner} with student_loss_weight=0 to train on "
            "the distillation losses alone."
        )


def check_weight(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number; received {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0; received {value}.")


def _loss_weights(weights, count, student_loss_weight):
    if weights is None:
        if student_loss_weight > 1:
            raise ValueError(
                f"student_loss_weight is {student_loss_weight} > 1, so the "
                "default distillation weights (1 - student_loss_weight) would "
                "be negative. Pass distillation_loss_weights explicitly."
            )
        return [1.0 - student_loss_weight] * count
    if isinstance(weights, numbers.Real):
        weights = [weights]
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"Got {len(weights)} distillation_loss_weights for {count} "
            "distillation_losses; give one weight per loss, in the same order."
        )
    for i, weight in enumerate(weights):
        check_weight(weight, f"distillation_loss_weights[{i}]")
    return weights


def compares_outputs(loss):
    """Whether `loss` compares class predictions on the models' outputs."""
    return loss.compares_predictions and not (
        loss.teacher_layers() or loss.student_layers()
    )


def _in_memory(x):
    """Whether `x` is arrays (or a dict of them), not a dataset or generator."""
    return x is not None and all(hasattr(a, "shape") for a in keras.tree.flatten(x))


def _symbolic_outputs(model):
    """The symbolic outputs of a Functional or Sequential model, else `None`."""
    try:
        if not model.inputs:
            return None
        if isinstance(model, keras.Sequential):
            return model.outputs[0]
        return model.output
    except (AttributeError, ValueError):
        return None
