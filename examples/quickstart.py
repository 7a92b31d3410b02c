"""Quickstart: distil a small MLP from a larger one on scikit-learn's digits.

The 8x8 handwritten digits ship inside scikit-learn, so this needs no
download. It trains a teacher, then the same small student twice with the
same seed and epochs: once on the labels alone, once with a `Distiller`
that adds Hinton's knowledge-distillation loss. It prints one table.

Digits is small and easy: the teacher is barely better than a small student
here (98% against 97%), so distillation has little to pass on: the two
students end within about one percent of each other, not always in the
distilled student's favour. `mnist_hinton.py` shows the gain on a problem
where the teacher knows much more than the student.

Run with any backend: `KERAS_BACKEND=jax python examples/quickstart.py`.
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_distill

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def load_data(seed=0):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )


def mlp(widths, name, dropout=0.0):
    layers = [keras.Input((64,))]
    for width in widths:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=name)


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0).argmax(-1) == y).mean())


def run(epochs=60, seeds=(0, 1, 2), temperature=2.0):
    """Returns test accuracies of the teacher and both students, per seed."""
    x_train, x_test, y_train, y_test = load_data()
    rows = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        teacher = mlp([256, 256], "teacher", dropout=0.3)
        teacher.compile("adam", SCCE)
        teacher.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)

        keras.utils.set_random_seed(seed)
        scratch = mlp([16], "scratch_student")
        scratch.compile("adam", SCCE)
        scratch.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)

        keras.utils.set_random_seed(seed)
        distiller = keras_distill.Distiller(
            teacher=teacher,
            student=mlp([16], "distilled_student"),
            distillation_losses=keras_distill.losses.KD(temperature=temperature),
            student_loss_weight=0.5,  # and 1 - 0.5 for KD
        )
        distiller.compile("adam", SCCE)
        distiller.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        rows.append(
            {
                "teacher": accuracy(teacher, x_test, y_test),
                "scratch": accuracy(scratch, x_test, y_test),
                "distilled": accuracy(distiller.student, x_test, y_test),
                "teacher_params": teacher.count_params(),
                "student_params": scratch.count_params(),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="15 epochs, 1 seed.")
    args = parser.parse_args()
    rows = run(epochs=15 if args.quick else args.epochs,
               seeds=(0,) if args.quick else (0, 1, 2))
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    print(f"Digits test accuracy, mean of {len(rows)} seed(s), "
          f"backend {keras.backend.backend()}:")
    print(f"{'model':<20}{'params':>8}{'accuracy':>10}")
    print(f"{'teacher':<20}{int(mean['teacher_params']):>8}{mean['teacher']:>10.4f}")
    print(f"{'student (labels)':<20}{int(mean['student_params']):>8}"
          f"{mean['scratch']:>10.4f}")
    print(f"{'student (distilled)':<20}{int(mean['student_params']):>8}"
          f"{mean['distilled']:>10.4f}")


if __name__ == "__main__":
    main()
