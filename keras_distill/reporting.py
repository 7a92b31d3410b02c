"""A report of teacher and students: accuracy, size and speed, in a table and plots."""

import math
import os
import statistics
import time

import numpy as np

from keras_distill.distiller import Distiller
from keras_distill.training import DistillationModel

CURVES = ("loss", "student_loss", "distillation_loss", "teacher_agreement")


def report(
    models,
    x,
    y,
    histories=None,
    path=None,
    batch_size=256,
    repeats=20,
):
    """Measures models on a test set; writes a table and plots.

    For each model: its top-1 accuracy on `(x, y)`, its parameter count and
    its inference latency, the median over `repeats` timed calls of
    `predict_on_batch` on one batch of `batch_size` test samples (after an
    untimed call that traces or compiles). With `path`, writes there
    `report.md` (the table) and, with matplotlib installed (the `report`
    extra), `models.png` (accuracy against parameters and against latency)
    and, given histories, `training.png` (each logged curve among `loss`,
    `student_loss`, `distillation_loss` and `teacher_agreement`, with its
    validation twin, per epoch).

    Args:
        models: a dict `{name: keras.Model}`, e.g. the teacher and the
            students, in the order of the table. A `Distiller` given here
            is measured by its student (`distiller.student`), which is
            what it predicts with and what `export_student` saves.
        x: test inputs, an array (or dict of arrays) with samples first.
        y: integer class labels of `x`.
        histories: an optional dict `{name: keras.callbacks.History or
            history dict}` of the runs to plot. Defaults to `None`.
        path: a folder to write the report to; created if needed. Existing
            report files in it are refused, not overwritten. Defaults to
            `None`: nothing is written.
        batch_size: the batch of the latency measure. Defaults to 256.
        repeats: the timed calls per model. Defaults to 20.

    Returns:
        A list of dicts, one per model: `model`, `accuracy`, `params` and
        `latency_ms`.

    Raises:
        ImportError: when `path` is given with histories or models to plot
            and matplotlib is not installed.
        FileExistsError: when `path` holds a report already.

    Example:

    ```python
    rows = keras_distill.report(
        {"teacher": teacher, "student (KD)": distiller.student},
        x_test, y_test,
        histories={"student (KD)": history},
        path="report",
    )
    ```
    """
    if not isinstance(models, dict) or not models:
        raise TypeError(
            "report() takes a non-empty dict {name: keras.Model}; received "
            f"{type(models).__name__}."
        )
    y = np.asarray(y).reshape(-1)
    if len(_flat(x)[0]) != len(y):
        raise ValueError(
            f"report(): x holds {len(_flat(x)[0])} samples and y {len(y)}; "
            "give the labels of the same samples."
        )
    histories = {
        name: getattr(history, "history", history)
        for name, history in (histories or {}).items()
    }
    rows = [
        _measure(name, _measured(name, model), x, y, batch_size, repeats)
        for name, model in models.items()
    ]
    if path is not None:
        _write(rows, histories, path)
    return rows


def _flat(x):
    return list(x.values()) if isinstance(x, dict) else [x]


def _batch(x, size):
    if isinstance(x, dict):
        return {k: v[:size] for k, v in x.items()}
    return x[:size]


def _measured(name, model):
    """The model `report` measures for `model`: a Distiller's student."""
    if isinstance(model, Distiller):
        return model.student
    if isinstance(model, DistillationModel):
        raise TypeError(
            f"report(): {name!r} is a {type(model).__name__}, which trains "
            "several models at once; pass each of them, e.g. "
            "{name: peer for name, peer in zip(model.peer_names, model.peers)}."
        )
    return model


def _measure(name, model, x, y, batch_size, repeats):
    predictions = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if predictions.ndim != 2 or predictions.shape[0] != len(y):
        raise ValueError(
            f"report(): the model {name!r} predicts shape {predictions.shape};"
            " report measures classifiers with outputs (samples, classes)."
        )
    batch = _batch(x, batch_size)
    model.predict_on_batch(batch)  # traces or compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - start)
    return {
        "model": name,
        "accuracy": float(np.mean(predictions.argmax(-1) == y)),
        "params": int(model.count_params()),
        "latency_ms": 1000.0 * statistics.median(times),
    }


def table(rows):
    """The rows of `report` as a Markdown table."""
    lines = [
        "| model | accuracy | parameters | latency (ms / batch) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['model']} | {r['accuracy']:.4f} | {r['params']:,} | "
        f"{r['latency_ms']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _write(rows, histories, path):
    files = ["report.md", "models.png"] + (["training.png"] if histories else [])
    existing = [f for f in files if os.path.exists(os.path.join(path, f))]
    if existing:
        raise FileExistsError(
            f"report(path={path!r}) holds {existing} already; give another "
            "folder, so that no earlier report is overwritten."
        )
    pyplot = _pyplot()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write(table(rows))
    _plot_models(pyplot, rows, os.path.join(path, "models.png"))
    if histories:
        _plot_training(pyplot, histories, os.path.join(path, "training.png"))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        from matplotlib import pyplot
    except ImportError as error:
        raise ImportError(
            "report(path=...) draws its plots with matplotlib, which is not "
            "installed. Install it (pip install 'keras-distill[report]'), or "
            "call report() without `path` to get the measures only."
        ) from error
    return pyplot


def _plot_models(pyplot, rows, filename):
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (axes[0], "params", "parameters"),
        (axes[1], "latency_ms", "latency (ms per batch)"),
    ):
        for row in rows:
            axis.scatter(row[key], row["accuracy"])
            axis.annotate(row["model"], (row[key], row["accuracy"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
        values = [row[key] for row in rows]
        if min(values) > 0 and max(values) > 10 * min(values):
            axis.set_xscale("log")  # sizes spanning decades
            axis.xaxis.set_minor_formatter(pyplot.NullFormatter())
        else:
            axis.xaxis.set_major_locator(pyplot.MaxNLocator(5))
        axis.margins(x=0.25, y=0.1)  # room for the names
        axis.set_xlabel(label)
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(filename, dpi=120)
    pyplot.close(figure)


def _plot_training(pyplot, histories, filename):
    curves = [c for c in CURVES if any(c in h for h in histories.values())]
    columns = max(1, len(curves))
    figure, axes = pyplot.subplots(
        1, columns, figsize=(4 * columns, 3.5), squeeze=False
    )
    for axis, curve in zip(axes[0], curves):
        for name, history in histories.items():
            for key, style in ((curve, "-"), (f"val_{curve}", "--")):
                values = history.get(key)
                if values and all(math.isfinite(v) for v in values):
                    epochs = range(1, len(values) + 1)
                    label = name if key == curve else f"{name} (validation)"
                    # A marker, so that a one-epoch run shows as a point.
                    axis.plot(epochs, values, style, label=label,
                              marker="o" if len(values) == 1 else None)
        axis.set_title(curve)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(filename, dpi=120)
    pyplot.close(figure)
