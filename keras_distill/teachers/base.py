"""What a Distiller asks of its teacher, and the base class of teachers.

A teacher is a Keras model that runs on each batch, once, in inference
mode, without gradient. Teachers that are more than a trained model (an
ensemble, a view of another modality, stored outputs, a copy of the
student) also take part in the step through the hooks of `TeacherHooks`;
a plain Keras model is given the hooks' defaults, which do nothing.
"""

import keras


class TeacherHooks:
    """The hooks a `Distiller` calls on its teacher; the defaults do nothing.

    `Teacher` subclasses override the ones they need. A custom loop that
    trains a Distiller without `fit` gets them through the Distiller's own
    methods (`begin_epoch`, `train_on_batch`, ...; see the guide to custom
    loops in the docs).
    """

    def student_view(self, inputs):
        """What the student sees of a batch's `inputs` (the teacher sees all).

        Called in every training, evaluation and prediction step.
        """
        return inputs

    def check_data(self, x):
        """Raises a clear error when in-memory data `x` cannot be distilled.

        Called by `fit`, `evaluate`, `train_on_batch` and `test_on_batch`
        on arrays (not on datasets or generators).
        """

    def check_student(self, student):
        """Raises when `student` cannot learn from this teacher.

        Called once, when the Distiller is built.
        """

    def update_step(self, student):
        """Updates the teacher inside a training step, after its pass.

        Runs inside the (compiled) step, so it may only assign to
        variables.
        """

    def update_epoch(self, epoch, student):
        """Updates the teacher before epoch `epoch` (counted from 0)."""

    def updates_per_epoch(self):
        """Whether `update_epoch` changes the teacher (so a loop of
        `train_on_batch` must call `Distiller.begin_epoch`)."""
        return type(self).update_epoch is not TeacherHooks.update_epoch


class Teacher(TeacherHooks, keras.Model):
    """Base class of teachers: a Keras model with the Distiller's hooks.

    Subclass it to write a teacher that does more than run a model: give it
    a `call` (its outputs on a batch) and override the hooks of
    `TeacherHooks` it needs. Layers inside it are tapped by the paths of
    its own sublayers (`"<inner model name>/<layer>"`).

    Example:

    ```python
    class Thresholded(keras_distill.teachers.Teacher):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, inputs, training=False):
            logits = self.inner(inputs, training=training)
            return keras.ops.maximum(logits, -10.0)
    ```
    """


_DEFAULT_HOOKS = TeacherHooks()


def hooks_of(teacher):
    """The `TeacherHooks` of `teacher`: its own, or the defaults."""
    return teacher if isinstance(teacher, TeacherHooks) else _DEFAULT_HOOKS
