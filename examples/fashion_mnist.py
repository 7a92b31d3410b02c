"""What the Fashion-MNIST tutorials share: the data, the CNNs, the training.

The tutorials train their models the same way (Adam with a cosine-decayed
learning rate, the same seed for every model), measure them with
`keras_distill.report` (test accuracy, parameters, latency; with
`--report DIR`, its table and plots) and compare them in one table.
"""

import argparse
import os
import time

import keras

import keras_distill
from datasets import load_fashion_mnist
from results import add_seeds_argument
from results import chosen_seeds
from results import print_table
from results import report_rows

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def load(train_size=None, test_size=None):
    """Fashion-MNIST scaled to [0, 1], `(B, 28, 28, 1)`: the first
    `train_size` training and `test_size` test images (all when `None`)."""
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = x_test[:test_size], y_test[:test_size]

    def scale(x):
        return (x[..., None] / 255.0).astype("float32")

    return (scale(x_train), y_train), (scale(x_test), y_test)


def cnn(widths, convs_per_block, name, embedding_dim=None, momentum=0.99):
    """A CNN whose blocks end in ReLU layers named `block1`, `block2`, ...

    Each block after the first starts with 2x2 max pooling; each convolution
    is 3x3 with batch normalisation of the given `momentum` (Keras's default
    0.99 lags the weights on schedules of a few hundred steps: 0.9 suits
    those). Global average pooling (`"pool"`), an optional `Dense` layer
    `"embedding"`, then ten logits.
    """
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for b, width in enumerate(widths, start=1):
        if b > 1:
            x = keras.layers.MaxPooling2D()(x)
        for c in range(convs_per_block):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=momentum)(x)
            last = c == convs_per_block - 1
            x = keras.layers.ReLU(name=f"block{b}" if last else None)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if embedding_dim:
        x = keras.layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def train_all(teacher_factory, student_factory, students, data, epochs,
              teacher_epochs, measure=None, seed=0, verbose=0,
              report_path=None):
    """Trains the teacher, then each student; returns one row per model.

    Args:
        teacher_factory: builds the teacher.
        student_factory: builds a fresh student.
        students: `(name, losses, loss_weights)` per student; `losses` is
            `None` for the student trained on the labels alone.
        data: `((x_train, y_train), (x_test, y_test))`.
        epochs: epochs of each student.
        teacher_epochs: epochs of the teacher.
        measure: an optional `measure(model) -> dict` of test measures
            beyond `keras_distill.report`'s. Defaults to `None`.
        seed: the random seed of every model. Defaults to 0.
        verbose: Keras verbosity. Defaults to 0.
        report_path: a folder for `keras_distill.report`'s table and plots
            (with each run's training curves). Defaults to `None`.

    Returns:
        A list of dicts, one per model: `report`'s `model`, `accuracy`,
        `params` and `latency_ms`, the measures, and training `seconds`.
    """
    (x_train, y_train), (x_test, y_test) = data
    batch_size = 128
    steps = -(-len(x_train) // batch_size)
    models, histories, seconds = {}, {}, {}

    def train(name, model, trained, num_epochs):
        start = time.perf_counter()
        model.compile(
            keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(3e-3, num_epochs * steps)
            ),
            SCCE,
        )
        histories[name] = model.fit(x_train, y_train, epochs=num_epochs,
                                    batch_size=batch_size, verbose=verbose)
        models[name] = trained
        seconds[name] = time.perf_counter() - start

    keras.utils.set_random_seed(seed)
    teacher = teacher_factory()
    train("teacher", teacher, teacher, teacher_epochs)
    for name, losses, weights in students:
        keras.utils.set_random_seed(seed)
        student = student_factory()
        if losses is None:
            train(name, student, student, epochs)
            continue
        distiller = keras_distill.Distiller(
            teacher, student, losses, distillation_loss_weights=weights
        )
        train(name, distiller, student, epochs)
    return report_rows(models, x_test, y_test, seconds, histories,
                       report_path, measure)


def experiment(teacher_factory, student_factory, students, measure=None):
    """A tutorial's `run` function, for its models and measures.

    Args:
        teacher_factory: builds the teacher.
        student_factory: builds a fresh student.
        students: returns `(name, losses, loss_weights)` per student.
        measure: an optional `measure(x_test, y_test)` returning
            `measure(model) -> dict`, the measures beyond
            `keras_distill.report`'s accuracy, size and latency. Defaults
            to `None`.

    Returns:
        `run(epochs=8, teacher_epochs=8, train_size=20000, seed=0,
        verbose=0, test_size=None, report_path=None)`, which trains the
        teacher on the first `train_size` training images (all when
        `None`), then each student, with the given epochs and seed, and
        returns one row per model (see `train_all`), measured on the first
        `test_size` test images (all when `None`).
    """

    def run(epochs=8, teacher_epochs=8, train_size=20000, seed=0, verbose=0,
            test_size=None, report_path=None):
        data = load(train_size, test_size)
        return train_all(
            teacher_factory, student_factory, students(), data, epochs,
            teacher_epochs, measure and measure(*data[1]), seed=seed,
            verbose=verbose, report_path=report_path,
        )

    return run


def main(description, run, title, measures=("accuracy",), teacher=True):
    """The tutorials' command line: runs `run` per seed, prints the table.

    Seeds 0, 1 and 2 by default (`--seeds` for others; seed 0 alone with
    `--quick`); the table gives the mean and standard deviation over them.

    Args:
        description: the script's docstring.
        run: `run(epochs, train_size, seed, test_size, report_path,
            [teacher_epochs]) -> rows`.
        title: the table's heading.
        measures: the measures `run`'s rows hold. Defaults to
            `("accuracy",)`.
        teacher: whether `run` trains a teacher, and takes
            `teacher_epochs`. Defaults to `True`.
    """
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    if teacher:
        parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=20000)
    add_seeds_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch on 512 training images, tested on "
                        "1,000, seed 0 unless --seeds: a smoke run.")
    parser.add_argument("--report", metavar="DIR",
                        help="write keras_distill.report's table and plots "
                        "of each seed to DIR/seed_<seed>")
    args = parser.parse_args()
    kwargs = {}
    if teacher:
        kwargs["teacher_epochs"] = 1 if args.quick else args.teacher_epochs
    runs = [
        run(
            epochs=1 if args.quick else args.epochs,
            train_size=512 if args.quick else args.train_size,
            seed=seed,
            test_size=1000 if args.quick else None,
            report_path=args.report and os.path.join(args.report, f"seed_{seed}"),
            **kwargs,
        )
        for seed in chosen_seeds(args)
    ]
    print_table(title, runs, measures)
