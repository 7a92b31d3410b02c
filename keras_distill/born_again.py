"""Born-Again networks: generations of a model, each taught by the last."""

import keras

from keras_distill.distiller import Distiller
from keras_distill.losses.response import KD


def born_again(
    teacher,
    build_student,
    generations,
    compile_kwargs,
    distillation_losses=None,
    distillation_loss_weights=None,
    student_loss_weight=0.5,
    **fit_kwargs,
):
    """Trains generations of students, each distilled from the one before.

    Generation 1 learns from `teacher`, generation 2 from generation 1, and
    so on: Born-Again Networks, where students of the teacher's own
    architecture often end up better than it. Each generation is a fresh
    model from `build_student`, trained by a `Distiller` with the given
    losses, `compile(**compile_kwargs)` and `fit(**fit_kwargs)`. Optimizers
    and metrics given as objects are copied for each generation, so none
    carries state from the last. `teacher` is not modified.

    The generations' ensemble (Born-Again Network Ensembles) is
    `keras_distill.teachers.MultiTeacher(students,
    combine="mean_probabilities")`: a model to evaluate, or the teacher of
    one more student.

    Args:
        teacher: the trained model that teaches generation 1.
        build_student: `build_student(generation) -> keras.Model`, a new
            built model for generation 1, 2, ...; give each generation a
            distinct name (they are logged and ensembled by name).
        generations: the number of generations to train, >= 1.
        compile_kwargs: the arguments of `Distiller.compile` (`optimizer`,
            `loss`, `metrics`, ...), a dict.
        distillation_losses: the losses of every generation. Defaults to
            `None`: `KD(temperature=1.0)`, as in the paper.
        distillation_loss_weights: as for `Distiller`. Defaults to `None`.
        student_loss_weight: as for `Distiller`. Defaults to 0.5.
        **fit_kwargs: the arguments of `fit` (`x`, `y`, `epochs`,
            `batch_size`, `validation_data`, `callbacks`, ...).

    Returns:
        A tuple `(students, histories)`: the trained students, generation 1
        first, and the `History` of each generation's `fit`.

    Example:

    ```python
    students, histories = keras_distill.born_again(
        teacher,
        lambda g: make_cnn(name=f"generation_{g}"),
        generations=3,
        compile_kwargs=dict(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        ),
        x=x_train, y=y_train, epochs=10, batch_size=128,
    )
    ensemble = keras_distill.teachers.MultiTeacher(
        students, combine="mean_probabilities"
    )
    ```

    Reference:
        Furlanello, Lipton, Tschannen, Itti and Anandkumar, "Born-Again
        Neural Networks", ICML 2018.
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or (
        generations < 1
    ):
        raise ValueError(
            f"born_again: `generations` must be an int >= 1; received "
            f"{generations!r}."
        )
    if not callable(build_student):
        raise TypeError(
            "born_again: `build_student` must be a callable taking the "
            f"generation number and returning a new model; received "
            f"{build_student!r}."
        )
    if not isinstance(compile_kwargs, dict):
        raise TypeError(
            "born_again: `compile_kwargs` must be a dict of Distiller.compile "
            f"arguments; received {compile_kwargs!r}."
        )
    losses = KD(temperature=1.0) if distillation_losses is None else distillation_losses
    loss_list = losses if isinstance(losses, (list, tuple)) else [losses]
    students, histories = [], []
    previous = teacher
    for generation in range(1, generations + 1):
        student = build_student(generation)
        names = [m.name for m in (teacher, *students)]
        if isinstance(student, keras.Model) and student.name in names:
            raise ValueError(
                f"born_again: build_student({generation}) returned a model "
                f"named {student.name!r}, like an earlier one ({names}). Name "
                "each generation, e.g. name=f'generation_{generation}'."
            )
        distiller = Distiller(
            previous,
            student,
            [_fresh(loss) for loss in loss_list],
            distillation_loss_weights=distillation_loss_weights,
            student_loss_weight=student_loss_weight,
        )
        distiller.compile(**_fresh_compile_kwargs(compile_kwargs))
        histories.append(distiller.fit(**fit_kwargs))
        students.append(student)
        previous = student
    return students, histories


def _fresh(obj):
    """A new object built from `obj`'s config: no state carried over."""
    return type(obj).from_config(obj.get_config())


def _fresh_compile_kwargs(kwargs):
    def fresh(value):
        stateful = (
            keras.optimizers.Optimizer,
            keras.metrics.Metric,
            keras.losses.Loss,
        )
        return _fresh(value) if isinstance(value, stateful) else value

    return {
        key: keras.tree.map_structure(fresh, value)
        if isinstance(value, (list, tuple, dict))
        else fresh(value)
        for key, value in kwargs.items()
    }
