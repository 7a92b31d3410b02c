"""Quickstart: a few labels, many unlabelled digits, and a teacher.

The 8x8 handwritten digits ship inside scikit-learn, so this needs no
download. The setting is Hinton et al.'s transfer set: a teacher trained on
every training label (someone else's model, say), and a small student that
has the labels of only one training image in ten, plus the other images
without labels. The same student is trained twice, with the same seed:

- on the 10% of images that have labels (what it can do alone);
- with a `Distiller` on all the images: the labelled ones in the label
  loss, every one in Hinton's KD loss (`keras_distill.UNLABELLED` marks
  the images without a label).

It prints the mean and standard deviation of test accuracy over five
seeds (a new teacher, labelled subset and initialisation each), and the
distilled student's gain over the labels-only student, seed by seed, with
its standard error.

Run with any backend: `KERAS_BACKEND=jax python examples/quickstart.py`.
"""

import argparse
import json
import time

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_distill

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH_SIZE = 32


def load_data():
    """Digits as float32 pixels in [0, 1]: 1,257 training, 540 test images."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )


def mlp(widths, name, dropout=0.0):
    layers = [keras.Input((64,))]
    for width in widths:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=name)


def labelled_subset(y, fraction, seed):
    """A mask that keeps `fraction` of each class's samples labelled."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        keep[rng.choice(members, max(1, round(fraction * len(members))), replace=False)] = True
    return keep


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=512).argmax(-1) == y).mean())


def epochs_for(steps, samples):
    """The epochs that make about `steps` updates of `BATCH_SIZE`."""
    return max(1, round(steps * BATCH_SIZE / samples))


def run_seed(seed, data, fraction=0.1, steps=1200, temperature=4.0):
    """Trains a teacher and both students; returns their test accuracies."""
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(seed)
    teacher = mlp([256, 256], "teacher", dropout=0.3)
    teacher.compile("adam", SCCE)
    teacher.fit(x_train, y_train, batch_size=BATCH_SIZE,
                epochs=epochs_for(steps, len(x_train)), verbose=0)
    labelled = labelled_subset(y_train, fraction, seed)

    keras.utils.set_random_seed(seed)
    alone = mlp([32], "student")
    alone.compile("adam", SCCE)
    alone.fit(x_train[labelled], y_train[labelled], batch_size=BATCH_SIZE,
              epochs=epochs_for(steps, labelled.sum()), verbose=0)

    keras.utils.set_random_seed(seed)
    distiller = keras_distill.Distiller(
        teacher=teacher,
        student=mlp([32], "student"),
        distillation_losses=keras_distill.losses.KD(temperature=temperature),
        student_loss_weight=0.1,  # and 0.9 for KD
    )
    distiller.compile("adam", SCCE)
    y_transfer = np.where(labelled, y_train, keras_distill.UNLABELLED)
    distiller.fit(x_train, y_transfer, batch_size=BATCH_SIZE,
                  epochs=epochs_for(steps, len(x_train)), verbose=0)
    return {
        "teacher": accuracy(teacher, x_test, y_test),
        "labels_only": accuracy(alone, x_test, y_test),
        "distilled": accuracy(distiller.student, x_test, y_test),
        "teacher_params": teacher.count_params(),
        "student_params": alone.count_params(),
        "labelled": int(labelled.sum()),
        "unlabelled": int((~labelled).sum()),
    }


def summarise(rows):
    """Means, standard deviations and the paired gain over seeds."""
    summary = {"seeds": len(rows)}
    for key in ("teacher", "labels_only", "distilled"):
        values = np.array([row[key] for row in rows])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))
                        if len(rows) > 1 else 0.0}
    gain = np.array([row["distilled"] - row["labels_only"] for row in rows])
    standard_error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    summary["gain"] = {"mean": float(gain.mean()), "standard_error": standard_error}
    return summary


def print_table(rows, summary, quick):
    first = rows[0]
    print(f"Digits, {first['labelled']} labelled and {first['unlabelled']} unlabelled "
          f"training images; test accuracy over {summary['seeds']} seeds, "
          f"backend {keras.backend.backend()}:")
    if quick:
        print("(--quick: a short smoke run; these numbers say nothing about the method)")
    print(f"{'model':<34}{'params':>8}{'accuracy':>10}{'± std':>8}")
    labels = {
        "teacher": ("teacher (all labels)", first["teacher_params"]),
        "labels_only": (f"student ({first['labelled']} labelled)", first["student_params"]),
        "distilled": ("student (distilled, + unlabelled)", first["student_params"]),
    }
    for key, (label, params) in labels.items():
        cell = summary[key]
        print(f"{label:<34}{params:>8}{cell['mean']:>10.4f}{cell['std']:>8.4f}")
    gain = summary["gain"]
    print(f"gain of distillation: {gain['mean']:+.4f} ± {gain['standard_error']:.4f} "
          "(mean ± standard error of the paired differences)")


def markdown_table(reports):
    """The README's table of results files written with `--results`.

    Args:
        reports: the loaded JSON of each backend's results file.

    Returns:
        A Markdown table: one row per backend, the mean ± standard
        deviation of each model's accuracy and the gain ± its standard
        error.
    """
    first = reports[0]["rows"][0]
    lines = [
        f"| backend | teacher | student, {first['labelled']} labels | "
        f"distilled, + {first['unlabelled']:,} unlabelled | gain |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        summary = report["summary"]
        cells = [f"{summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}"
                 for k in ("teacher", "labels_only", "distilled")]
        gain = summary["gain"]
        cells.append(f"{gain['mean']:+.3f} ± {gain['standard_error']:.3f}")
        lines.append(f"| {report['backend']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="Seeds to average over.")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 2 seeds, 100 updates per model.")
    parser.add_argument("--results", help="Also write the rows and summary to this JSON file.")
    parser.add_argument("--table", nargs="+", metavar="RESULTS",
                        help="Only print the Markdown table of these results files.")
    args = parser.parse_args()
    if args.table:
        reports = []
        for path in args.table:
            with open(path) as f:
                reports.append(json.load(f))
        print(markdown_table(reports))
        return
    start = time.perf_counter()
    data = load_data()
    seeds = range(2 if args.quick else args.seeds)
    rows = [run_seed(seed, data, steps=100 if args.quick else 1200) for seed in seeds]
    summary = summarise(rows)
    print_table(rows, summary, args.quick)
    seconds = time.perf_counter() - start
    print(f"({seconds:.0f} s)")
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"backend": keras.backend.backend(), "quick": args.quick,
                       "seconds": round(seconds, 1), "summary": summary, "rows": rows},
                      f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
