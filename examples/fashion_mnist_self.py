"""No teacher to hand: mutual learning and self-distillation on Fashion-MNIST.

Tutorial. Every model here has the same architecture, the student CNN of
`fashion_mnist_attention.py` (three blocks of one 3x3 convolution, 16/32/64
channels, 24k parameters), and no bigger teacher exists. Each scheme is
trained with the same seed, optimizer, schedule and epochs as the plain
model it is compared with:

1. the CNN on the labels alone (the baseline, and generation 0 below);
2. Deep Mutual Learning (`keras_distill.MutualLearning`): two such CNNs,
   from different initial weights, trained together in one `fit`, each
   from the labels and from the other's predictions (KD at T = 1, the
   paper's KL);
3. a mean teacher (`teachers.MovingAverage`, decay 0.99): the student
   learns from an exponential moving average of its own weights; the
   average is a model too, and is reported;
4. a snapshot teacher (`teachers.Snapshot`, every 2 epochs): the student
   learns from itself as it was at the start of the current pair of
   epochs, after two epochs on the labels alone;
5. Born-Again networks (`keras_distill.born_again`): generation 1 learns
   from the baseline, generation 2 from generation 1, and the three
   generations' averaged probabilities form an ensemble
   (`teachers.MultiTeacher(..., combine="mean_probabilities")`).

Measured on seed 0 alone (`--seeds 0`; JAX, 2 CPU cores shared with
other jobs), test accuracy on the 10,000 test images, with the other
defaults (first 20,000 training images, 8 epochs) and then with
`--train-size 5000 --epochs 20`:

| model | 20k images, 8 epochs | 5k images, 20 epochs |
| --- | --- | --- |
| labels only (generation 0) | 0.8775 | 0.8465 |
| mutual learning, peer 1 / peer 2 | 0.8756 / 0.8742 | 0.8437 / 0.8445 |
| student of its moving average | 0.8655 | 0.8215 |
| the moving average itself | 0.8632 | 0.7781 |
| student of its snapshots | 0.8475 | 0.8069 |
| born-again generation 1 / 2 | 0.8732 / 0.8710 | 0.8422 / 0.8371 |
| born-again ensemble of generations 0-2 | 0.8767 | 0.8472 |

None of the schemes beats plain training here. Mutual learning and the
born-again generations and ensemble stay within about half a point of it
(the standard error of one accuracy is about 0.3 points); the moving
average and snapshot teachers cost one to four points. Those two start as
the untrained student and are learnt from at full weight from the first
epoch on (or from epoch 2 for the snapshot): early on the student is pulled
towards a worse copy of itself. Tarvainen & Valpola ramp the weight of
their mean teacher up over many epochs, and the papers' gains come from
long schedules of large models on CIFAR and ImageNet, where a model
overfits its labels; this 24k-parameter CNN, trained for minutes, does
not. The moving average also lags: with decay 0.99 it averages about the
last hundred steps, batch-normalisation statistics included, and in the
short run it trails the student. The tutorial shows how each scheme is
set up and measured; on a problem like this one, plain training is as
good.

Run: `KERAS_BACKEND=jax python examples/fashion_mnist_self.py` (`--quick`
for a smoke run on seed 0; seeds 0, 1 and 2 by default, `--seeds` for
others; `--report DIR` for `keras_distill.report`'s table and plots). The
data is fetched as `examples/datasets.py` describes.
"""

import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_distill  # noqa: E402
from fashion_mnist import SCCE  # noqa: E402
from fashion_mnist import cnn  # noqa: E402
from fashion_mnist import load  # noqa: E402
from fashion_mnist import main  # noqa: E402
from keras_distill.callbacks import LossWeightScheduler  # noqa: E402
from keras_distill.losses import KD  # noqa: E402
from keras_distill.teachers import MovingAverage  # noqa: E402
from keras_distill.teachers import MultiTeacher  # noqa: E402
from keras_distill.teachers import Snapshot  # noqa: E402
from results import report_rows  # noqa: E402

BATCH_SIZE = 128


def student_model(name):
    return cnn((16, 32, 64), 1, name)


def run(epochs=8, train_size=20000, seed=0, test_size=None, verbose=0,
        report_path=None):
    """Trains every scheme once; returns one row per model.

    Args:
        epochs: epochs of every training run. Defaults to 8.
        train_size: training images used (all when `None`). Defaults to
            20,000.
        seed: the seed of every model. Defaults to 0.
        test_size: test images used (all when `None`). Defaults to `None`.
        verbose: Keras verbosity. Defaults to 0.
        report_path: a folder for `keras_distill.report`'s table and plots.
            Defaults to `None`.

    Returns:
        A list of dicts, one per model: `keras_distill.report`'s `model`,
        `accuracy` (test), `params` and `latency_ms`, plus `seconds` of
        training.
    """
    (x_train, y_train), (x_test, y_test) = load(train_size, test_size)
    steps = -(-len(x_train) // BATCH_SIZE)
    models, histories, seconds = {}, {}, {}

    def optimizer():
        schedule = keras.optimizers.schedules.CosineDecay(3e-3, epochs * steps)
        return keras.optimizers.Adam(schedule)

    def fit(model, **kwargs):
        return model.fit(x_train, y_train, epochs=epochs, batch_size=BATCH_SIZE,
                         verbose=verbose, **kwargs)

    def timed(train):
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        model = train()
        return model, time.perf_counter() - start

    def add(name, model, training_seconds, history=None):
        models[name], seconds[name] = model, training_seconds
        if history is not None:
            histories[name] = history

    def distilled(teacher, student, **fit_kwargs):
        distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
        distiller.compile(optimizer(), SCCE)
        return fit(distiller, **fit_kwargs)

    def plain():
        model = student_model("generation_0")
        model.compile(optimizer(), SCCE)
        return model, fit(model)

    (baseline, history), time_taken = timed(plain)
    add("labels only (generation 0)", baseline, time_taken, history)

    def mutual():
        peers = keras_distill.MutualLearning(
            [student_model("peer_1"), student_model("peer_2")]
        )
        peers.compile(optimizer(), SCCE)
        fit(peers)
        return peers

    peers, time_taken = timed(mutual)
    for peer in peers.peers:
        add(f"mutual learning, {peer.name} of 2", peer, time_taken)

    def mean_teacher():
        student = student_model("student")
        average = MovingAverage(student, decay=0.99)
        return student, average, distilled(average, student)

    (student, average, history), time_taken = timed(mean_teacher)
    add("student of its moving average", student, time_taken, history)
    add("the moving average itself", average, 0.0)

    def snapshot():
        student = student_model("student")
        warm_up = LossWeightScheduler(lambda e: 0.0 if e < 2 else 0.5, loss="kd")
        history = distilled(Snapshot(student, every=2), student,
                            callbacks=[warm_up])
        return student, history

    (student, history), time_taken = timed(snapshot)
    add("student of its snapshots (every 2 epochs)", student, time_taken, history)

    def born_again():
        return keras_distill.born_again(
            baseline,
            lambda g: student_model(f"generation_{g}"),
            generations=2,
            compile_kwargs={"optimizer": optimizer(), "loss": SCCE},
            distillation_losses=KD(temperature=2.0),
            x=x_train, y=y_train, epochs=epochs, batch_size=BATCH_SIZE,
            verbose=verbose,
        )

    (generations, generation_histories), time_taken = timed(born_again)
    for generation, history in zip(generations, generation_histories):
        add(f"born-again {generation.name}", generation, time_taken / 2, history)
    add("born-again ensemble of generations 0-2",
        MultiTeacher([baseline, *generations], combine="mean_probabilities"), 0.0)
    return report_rows(models, x_test, y_test, seconds, histories, report_path)


if __name__ == "__main__":
    main(__doc__, run, "Fashion-MNIST test accuracy, one architecture",
         teacher=False)
