"""The tutorials' results table: each model's test measures, over seeds."""

import keras
import numpy as np


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
