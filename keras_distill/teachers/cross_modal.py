"""A teacher that sees another modality of each sample than the student."""

import keras

from keras_distill.taps import symbolic_inputs
from keras_distill.teachers.base import Teacher


def _view(selector, inputs, role):
    if callable(selector):
        return selector(inputs)
    if not isinstance(inputs, dict) or selector not in inputs:
        available = list(inputs) if isinstance(inputs, dict) else "not a dict"
        raise ValueError(
            f"CrossModal's {role}_input={selector!r} picks a key of dict "
            f"inputs; the inputs have keys {available}."
        )
    return inputs[selector]


@keras.saving.register_keras_serializable(package="keras_distill")
class CrossModal(Teacher):
    """A teacher that sees another modality of each sample than the student.

    The data hold every modality of a sample (for example a dict with
    `"pixels"` and `"fourier"`); `teacher_input` picks or derives the
    teacher's view, `student_input` the student's. Pass it as the
    `Distiller`'s teacher: the Distiller then gives the student its own
    view, in training, evaluation and prediction alike. The exported
    student takes its modality alone. The teacher's layers are reached as
    `"<teacher name>/<layer>"`.

    Args:
        teacher: the teacher, a built Keras model.
        teacher_input: a key of the dict inputs, or a callable
            `inputs -> teacher inputs`.
        student_input: the same for the student.
        name: the model's name. Defaults to `"cross_modal"`.

    Example:

    ```python
    teacher = keras_distill.teachers.CrossModal(
        pixel_cnn, teacher_input="pixels", student_input="fourier"
    )
    distiller = keras_distill.Distiller(teacher, fourier_mlp, KD(temperature=4.0))
    distiller.fit({"pixels": images, "fourier": coefficients}, labels)
    ```

    Reference:
        Gupta, Hoffman and Malik, "Cross Modal Distillation for Supervision
        Transfer", CVPR 2016.
    """

    def __init__(
        self, teacher, teacher_input, student_input, name="cross_modal", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(teacher, keras.Model):
            raise TypeError(
                f"CrossModal wraps a Keras model; received {type(teacher).__name__}."
            )
        for role, selector in (("teacher", teacher_input), ("student", student_input)):
            if not (callable(selector) or isinstance(selector, str)):
                raise TypeError(
                    f"CrossModal: `{role}_input` must be a dict key (str) or a "
                    f"callable; received {selector!r}."
                )
        self.teacher = teacher
        self.teacher_input = teacher_input
        self.student_input = student_input
        inputs = symbolic_inputs(teacher)
        if inputs is not None and isinstance(teacher_input, str):
            self.build({teacher_input: inputs.shape})

    def call(self, inputs, training=False):
        return self.teacher(_view(self.teacher_input, inputs, "teacher"), training=training)

    def student_view(self, inputs):
        """What the student sees of `inputs`."""
        return _view(self.student_input, inputs, "student")

    def get_config(self):
        def selector(value):
            return value if isinstance(value, str) else (
                keras.saving.serialize_keras_object(value)
            )

        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "teacher_input": selector(self.teacher_input),
            "student_input": selector(self.student_input),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "teacher_input", "student_input"):
            if not isinstance(config[key], str):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
