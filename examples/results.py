"""The tutorials' results: measured by `keras_distill.report`, printed over seeds."""

import keras
import numpy as np

import keras_distill


def report_rows(models, x_test, y_test, seconds, histories=None,
                report_path=None, measure=None):
    """`keras_distill.report`'s rows, each with its training seconds.

    Args:
        models: a dict `{name: model}` in the order of the table.
        x_test: the test inputs.
        y_test: their integer labels.
        seconds: a dict `{name: training seconds}`.
        histories: a dict `{name: History}` to plot. Defaults to `None`.
        report_path: a folder for the report's table and plots. Defaults
            to `None`: nothing is written.
        measure: an optional `measure(model) -> dict` of further measures
            added to each row. Defaults to `None`.

    Returns:
        One dict per model: `report`'s `model`, `accuracy`, `params` and
        `latency_ms`, the measures of `measure`, and `seconds`.
    """
    rows = keras_distill.report(
        models, x_test, y_test, histories=histories, path=report_path
    )
    for row in rows:
        if measure is not None:
            row.update(measure(models[row["model"]]))
        row["seconds"] = round(seconds[row["model"]], 1)
    return rows


def print_table(title, runs, measures=("accuracy",)):
    """Prints the mean and standard deviation of each measure per model.

    Args:
        title: the table's heading; the backend is appended.
        runs: one list per seed of dicts with the keys `model`, `params`,
            `seconds` and each of `measures`, in the same model order.
        measures: the keys of the measures to print. Defaults to
            `("accuracy",)`.
    """
    print(f"{title}, backend {keras.backend.backend()}, {len(runs)} seed(s):")
    width = max(len(row["model"]) for row in runs[0]) + 2
    header = "".join(f"{m:>12}{'± std':>8}" for m in measures)
    print(f"{'model':<{width}}{header}{'params':>10}{'seconds':>9}")
    for i, row in enumerate(runs[0]):
        cells = ""
        for m in measures:
            values = [run[i][m] for run in runs]
            cells += f"{np.mean(values):>12.4f}{np.std(values):>8.4f}"
        seconds = np.mean([run[i]["seconds"] for run in runs])
        print(f"{row['model']:<{width}}{cells}{row['params']:>10}{seconds:>9.1f}")
