"""Hinton et al. (2015) on MNIST: a 2x800 MLP distilled from a 2x1200 teacher.

The paper's set-up: a teacher MLP with two hidden layers of 1200 ReLU units,
regularised with dropout and trained on digits jittered by up to two pixels,
and a student with two layers of 800 units and no regularisation. Trained on
the labels alone the student overfits; trained to match the teacher's
softened probabilities (`KD` at temperature T) it makes fewer test errors.
This script trains the teacher, a scratch student and one distilled student
per temperature, all with the same seed and optimizer (Adam, cosine-decayed
learning rate) and the students for the same epochs, and prints their errors
on the 10,000 test digits: the mean and standard deviation over seeds 0, 1
and 2 by default (`--seeds` for others).

By default the models see the first 15,000 training images, which keeps
each model to a minute or two on two CPU cores and is where the effect is
clear: the teacher knows much more than a student can learn from those
labels. On JAX, seed 0 (13 minutes of training on 2 CPU cores shared with
other jobs):

| model | test errors |
| --- | --- |
| teacher 2x1200 | 177 |
| student 2x800, labels | 244 |
| student, KD T=1 | 239 |
| student, KD T=2 | 222 |
| student, KD T=4 | 207 |
| student, KD T=8 | 201 |
| student, KD T=20 | 201 |

Higher temperatures help, as in the paper, until about T = 8: at T = 1 the
teacher's probabilities are nearly one-hot and carry little more than the
labels; softened, they say which wrong digits look like the right one.
`--train-size 60000` uses the whole training set; there a 30-epoch teacher is
only slightly better than the scratch student and the gain shrinks. Hinton et
al. trained far longer (67 teacher errors, 74 distilled). To reach their
level within minutes, see `mnist_patient.py`: a CNN teacher and function
matching on augmented views.

Run: `KERAS_BACKEND=jax python examples/mnist_hinton.py` (`--quick` for a
smoke run on seed 0; `--seeds 0` for the set-up of the table above;
`--report DIR` for `keras_distill.report`'s table and plots of each seed).
The data is fetched as `examples/datasets.py` describes.
"""

import argparse
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_distill  # noqa: E402
from datasets import load_mnist  # noqa: E402
from results import add_seeds_argument  # noqa: E402
from results import chosen_seeds  # noqa: E402
from results import print_table  # noqa: E402
from results import report_rows  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(width, name, dropout=0.0, input_dropout=0.0):
    """Two hidden ReLU layers of `width` units, returning logits."""
    layers = [keras.Input((784,))]
    if input_dropout:
        layers.append(keras.layers.Dropout(input_dropout))
    for i in range(2):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name=name)


def jitter(images, rng, pixels=2):
    """Shifts each 28x28 image by up to `pixels` in each direction (Hinton's
    teacher saw such jittered digits)."""
    padded = np.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (28, 28), axis=(1, 2))
    dy, dx = rng.integers(0, 2 * pixels + 1, size=(2, len(images)))
    return windows[np.arange(len(images)), dy, dx]


def test_errors(model, x, y):
    predictions = model.predict(x, batch_size=1000, verbose=0)
    return int((predictions.argmax(-1) != y).sum())


def run(epochs=20, teacher_epochs=30, temperatures=(1.0, 2.0, 4.0, 8.0, 20.0),
        student_loss_weight=0.5, learning_rate=2e-3, train_size=15000, seed=0,
        report_path=None, verbose=0):
    """Trains the teacher, a scratch student and a student per temperature.

    Args:
        epochs: epochs of each student. Defaults to 20.
        teacher_epochs: epochs of the teacher. Defaults to 30.
        temperatures: the KD temperatures, one distilled student each.
            Defaults to `(1, 2, 4, 8, 20)`.
        student_loss_weight: weight of the label loss in the distilled
            student's objective; the KD weight is 1 minus it. Defaults to 0.5.
        learning_rate: Adam's initial learning rate, which decays to 0 along
            a cosine over each model's epochs. Defaults to 2e-3.
        train_size: use the first `train_size` training images. Defaults
            to 15,000; `None` or 60,000 for all.
        seed: the random seed of every model. Defaults to 0.
        report_path: a folder for `keras_distill.report`'s table and plots.
            Defaults to `None`: nothing written.
        verbose: Keras verbosity. Defaults to 0.

    Returns:
        One dict per model, in training order: `model`, `errors` (of the
        10,000 test digits), `seconds` of training, and `report`'s
        `accuracy`, `params` and `latency_ms`.
    """
    (images, y_train), (x_test, y_test) = load_mnist()
    if train_size:
        images, y_train = images[:train_size], y_train[:train_size]

    def flat(x):
        return x.reshape(-1, 784).astype("float32") / 255.0

    x_train, x_test = flat(images), flat(x_test)
    fit_args = dict(batch_size=128, verbose=verbose)
    steps_per_epoch = -(-len(x_train) // 128)

    def adam(num_epochs):
        """Adam whose learning rate decays to 0 along a cosine."""
        return keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(
                learning_rate, num_epochs * steps_per_epoch
            )
        )

    models, histories, seconds = {}, {}, {}

    def timed(name, train):
        start = time.perf_counter()
        models[name] = train()
        seconds[name] = round(time.perf_counter() - start, 1)
        return models[name]

    def train_teacher():
        keras.utils.set_random_seed(seed)
        teacher = mlp(1200, "teacher", dropout=0.4, input_dropout=0.2)
        teacher.compile(adam(teacher_epochs), SCCE)
        rng = np.random.default_rng(seed)
        for _ in range(teacher_epochs):  # a new jitter of every digit per epoch
            teacher.fit(flat(jitter(images, rng)), y_train, epochs=1, **fit_args)
        return teacher

    def train_scratch():
        keras.utils.set_random_seed(seed)
        student = mlp(800, "student")
        student.compile(adam(epochs), SCCE)
        student.fit(x_train, y_train, epochs=epochs, **fit_args)
        return student

    def train_distilled(temperature):
        keras.utils.set_random_seed(seed)
        distiller = keras_distill.Distiller(
            teacher=teacher,
            student=mlp(800, "student"),
            distillation_losses=keras_distill.losses.KD(temperature=temperature),
            student_loss_weight=student_loss_weight,
        )
        distiller.compile(adam(epochs), SCCE)
        history = distiller.fit(x_train, y_train, epochs=epochs, **fit_args)
        histories[f"student, KD T={temperature:g}"] = history
        return distiller.student

    teacher = timed("teacher 2x1200", train_teacher)
    timed("student 2x800, labels", train_scratch)
    for temperature in temperatures:
        timed(f"student, KD T={temperature:g}",
              lambda: train_distilled(temperature))
    return error_rows(models, seconds, x_test, y_test, histories, report_path)


def error_rows(models, seconds, x_test, y_test, histories=None, report_path=None):
    """`results.report_rows`, each row with its test errors.

    Args:
        models: a dict `{name: model}` in the order of the table.
        seconds: a dict `{name: training seconds}`.
        x_test: the test digits.
        y_test: their labels.
        histories: a dict `{name: History}` to plot. Defaults to `None`.
        report_path: a folder for the report's files. Defaults to `None`.

    Returns:
        One dict per model: `report`'s `model`, `accuracy`, `params` and
        `latency_ms`, plus `errors` and `seconds`.
    """
    rows = report_rows(models, x_test, y_test, seconds, histories, report_path)
    for row in rows:
        row["errors"] = int(round((1.0 - row["accuracy"]) * len(y_test)))
    return rows


def print_errors(runs, heading=""):
    """Prints the test errors of `error_rows` per model: their mean and
    standard deviation over the seeds (`runs`, one list of rows per seed),
    the parameters and the mean training seconds, under a heading naming
    the backend (`heading` is appended to the title)."""
    print_table(f"MNIST test errors (of 10,000){heading}", runs,
                measures=("errors",), precision=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--train-size", type=int, default=15000)
    parser.add_argument("--temperatures", type=float, nargs="+",
                        default=[1.0, 2.0, 4.0, 8.0, 20.0])
    add_seeds_argument(parser)
    parser.add_argument("--report", metavar="DIR",
                        help="write keras_distill.report's table and plots "
                        "of each seed to DIR/seed_<seed>")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 training images, 2 epochs, T=4, seed 0 "
                        "unless --seeds: a smoke run.")
    args = parser.parse_args()
    runs = [
        run(
            epochs=2 if args.quick else args.epochs,
            teacher_epochs=2 if args.quick else args.teacher_epochs,
            temperatures=[4.0] if args.quick else args.temperatures,
            train_size=2000 if args.quick else args.train_size,
            seed=seed,
            report_path=args.report and os.path.join(args.report, f"seed_{seed}"),
        )
        for seed in chosen_seeds(args)
    ]
    print_errors(runs)


if __name__ == "__main__":
    main()
