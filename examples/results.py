"""The tutorials' results table: test accuracy per model, over seeds."""

import keras
import numpy as np


def print_accuracy_table(title, runs):
    """Prints mean and standard deviation of each model's accuracy.

    Args:
        title: the table's heading; the backend is appended.
        runs: one list per seed of dicts with the keys `model`, `accuracy`,
            `params` and `seconds`, in the same model order.
    """
    print(f"{title}, backend {keras.backend.backend()}, {len(runs)} seed(s):")
    width = max(len(row["model"]) for row in runs[0]) + 2
    print(f"{'model':<{width}}{'accuracy':>10}{'± std':>8}{'params':>10}{'seconds':>9}")
    for i, row in enumerate(runs[0]):
        scores = [run[i]["accuracy"] for run in runs]
        seconds = np.mean([run[i]["seconds"] for run in runs])
        print(f"{row['model']:<{width}}{np.mean(scores):>10.4f}"
              f"{np.std(scores):>8.4f}{row['params']:>10}{seconds:>9.1f}")
