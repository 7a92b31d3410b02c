"""Self-distillation teachers: copies of the student that follow its training.

A `StudentCopy` starts as an exact copy of the student (same architecture,
same weights) and is passed to the `Distiller` as the teacher. The
Distiller updates it from the student as training goes: on every training
step for `MovingAverage`, at epoch boundaries for `Snapshot`. The updates
assign to the copy's variables inside the compiled step or between epochs,
so they work on every backend; the copy is never trained by the optimizer,
and evaluation and prediction leave it unchanged. The student itself is
only read.
"""

import keras
from keras import ops

from keras_distill.taps import symbolic_inputs
from keras_distill.teachers.base import Teacher


class StudentCopy(Teacher):
    """Base class of teachers that are a copy of the student.

    The copy is a model of the same architecture as the student, reached by
    feature losses as `"<student name>/<layer>"`. Subclasses say how it
    follows the student by overriding `update_step` (called inside each
    training step) or `update_epoch` (called at the start of each epoch).

    Args:
        student: the built student model to copy.
        name: the model's name.
        **kwargs: other `keras.Model` arguments.
    """

    def __init__(self, student, name, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model) or not student.built:
            raise ValueError(
                f"{type(self).__name__} copies a built Keras model (the "
                f"student); received {student!r}. Build it first, e.g. by "
                "calling it on a batch."
            )
        self.student_copy = _copy(student, type(self).__name__)
        inputs = symbolic_inputs(self.student_copy)
        if inputs is None:
            self.built = True
        else:  # built like the student, for the taps
            self.build(keras.tree.map_structure(lambda x: x.shape, inputs))

    def call(self, inputs, training=False):
        return self.student_copy(inputs, training=training)

    def check_student(self, student):
        """Raises unless `student` has the copy's variables, in order.

        Args:
            student: the Distiller's student.

        Raises:
            ValueError: naming the first variable whose shape differs.
        """
        ours, theirs = self.student_copy.variables, student.variables
        if len(ours) != len(theirs):
            raise ValueError(
                f"The {type(self).__name__} teacher is a copy of a model with "
                f"{len(ours)} variables, but the student has {len(theirs)}. "
                f"Build the teacher from this student: "
                f"{type(self).__name__}(student)."
            )
        for a, b in zip(ours, theirs):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(
                    f"The {type(self).__name__} teacher's variable {a.path} has "
                    f"shape {a.shape}, the student's {b.path} {b.shape}: the "
                    "teacher is not a copy of this student. Build it with "
                    f"{type(self).__name__}(student)."
                )

    def _followed_pairs(self, student):
        """(copy variable, student variable) pairs of floating-point state."""
        return [
            (ours, theirs)
            for ours, theirs in zip(self.student_copy.variables, student.variables)
            if keras.backend.is_float_dtype(ours.dtype)
        ]

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student_copy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_distill")
class MovingAverage(StudentCopy):
    """A teacher that is an exponential moving average of the student.

    After every training step's teacher pass, each of the copy's variables
    becomes `decay * copy + (1 - decay) * student` (weights and
    batch-normalisation statistics alike). The averaged model is smoother
    and usually more accurate than the student it follows, which then
    learns from its predictions: the "mean teacher" of Tarvainen & Valpola
    and the momentum teacher of self-distillation methods such as DINO. The
    average of the last `1 / (1 - decay)` steps or so dominates: with the
    default 0.999, about a thousand steps.

    Args:
        student: the built student model; the teacher starts as its copy.
        decay: the weight of the past, in [0, 1). Defaults to 0.999.
        name: the model's name. Defaults to `"moving_average"`.
        **kwargs: other `keras.Model` arguments.

    Example:

    ```python
    teacher = keras_distill.teachers.MovingAverage(student, decay=0.99)
    distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
    ```

    Reference:
        Tarvainen and Valpola, "Mean teachers are better role models",
        NeurIPS 2017.
    """

    def __init__(self, student, decay=0.999, name="moving_average", **kwargs):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(
                f"MovingAverage: `decay` must be in [0, 1); received {decay}. "
                "Values near 1 (0.99 to 0.9999) average over many steps."
            )
        super().__init__(student, name=name, **kwargs)
        self.decay = float(decay)

    def update_step(self, student):
        for ours, theirs in self._followed_pairs(student):
            current = ops.stop_gradient(ops.cast(theirs, ours.dtype))
            ours.assign(self.decay * ours + (1.0 - self.decay) * current)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


@keras.saving.register_keras_serializable(package="keras_distill")
class Snapshot(StudentCopy):
    """A teacher that is the student as it was at the start of the cycle.

    At the start of every `every`-th epoch (epochs `every`, `2 * every`,
    ...; counted from 0) the copy takes the student's current weights, and
    stays fixed until the next one: the student learns from itself as it
    was up to `every` epochs ago. Before the first snapshot the teacher is
    the student as it was when the `Snapshot` was built, so build it from a
    student that has trained for a while, or give the distillation loss a
    weight of 0 in the first epochs with
    `keras_distill.callbacks.LossWeightScheduler`.

    `fit` calls `Distiller.begin_epoch` at the start of every epoch; a loop
    of `train_on_batch` calls it itself (it warns once when it does not).

    Args:
        student: the built student model; the teacher starts as its copy.
        every: epochs between snapshots, >= 1. Defaults to 1.
        name: the model's name. Defaults to `"snapshot"`.
        **kwargs: other `keras.Model` arguments.

    Example:

    ```python
    teacher = keras_distill.teachers.Snapshot(student, every=5)
    distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
    warm_up = keras_distill.callbacks.LossWeightScheduler(
        lambda epoch: 0.0 if epoch < 5 else 0.5, loss="kd"
    )
    distiller.fit(x, y, epochs=20, callbacks=[warm_up])
    ```

    Reference:
        Yang, Xie, Qiao and Yuille, "Snapshot Distillation: Teacher-Student
        Optimization in One Generation", CVPR 2019.
    """

    def __init__(self, student, every=1, name="snapshot", **kwargs):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"Snapshot: `every` is a number of epochs, an int >= 1; "
                f"received {every!r}."
            )
        super().__init__(student, name=name, **kwargs)
        self.every = every

    def update_epoch(self, epoch, student):
        if epoch > 0 and epoch % self.every == 0:
            for ours, theirs in self._followed_pairs(student):
                # A copy in NumPy: sharing the student's buffer would make
                # JAX donate one buffer twice.
                ours.assign(ops.convert_to_numpy(theirs))

    def get_config(self):
        return {**super().get_config(), "every": self.every}


def _copy(model, owner):
    """A new model of `model`'s architecture, holding its current weights."""
    try:
        copy = keras.models.clone_model(model)
    except Exception as error:  # clone_model raises several types
        raise ValueError(
            f"{owner} could not copy the student {model.name!r} with "
            f"keras.models.clone_model ({error}). A subclassed model needs "
            "get_config() and from_config() to be copied."
        ) from error
    if not copy.built:
        copy.build_from_config(model.get_build_config())
    copy.set_weights(model.get_weights())
    return copy
