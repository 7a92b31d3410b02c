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


DEFAULT_SEEDS = (0, 1, 2)


def add_seeds_argument(parser, default=DEFAULT_SEEDS):
    """Adds `--seeds` to a tutorial's `argparse` parser; see `chosen_seeds`.

    Args:
        parser: an `argparse.ArgumentParser` that also takes `--quick`.
        default: the seeds of a full run. Defaults to `DEFAULT_SEEDS`,
            0, 1 and 2.
    """
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="SEED",
        help="the random seeds, one run each; the tables give the mean and "
        "the standard deviation over them. Defaults to "
        f"{' '.join(map(str, default))}, or 0 alone with --quick.",
    )
    parser.set_defaults(default_seeds=list(default))


def chosen_seeds(args):
    """The seeds to run: `--seeds` where given, else seed 0 alone for a
    `--quick` smoke run, else the default of `add_seeds_argument`."""
    if args.seeds:
        return args.seeds
    return [0] if getattr(args, "quick", False) else args.default_seeds


def mean_and_std(values):
    """The mean of `values` (one per seed) and their sample standard
    deviation (ddof=1); the deviation is `None` for a single value, where
    there is no spread to measure."""
    values = np.asarray(values, dtype="float64")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def format_std(std, precision=4, width=0):
    """`std` with `precision` decimals, or `"-"` when it is `None`."""
    text = "-" if std is None else f"{std:.{precision}f}"
    return f"{text:>{width}}"


def mean_std_text(values, precision=4, sign=False):
    """`"mean ± std"` of `values` over seeds, `"mean ± -"` for one seed."""
    mean, std = mean_and_std(values)
    return f"{mean:{'+' if sign else ''}.{precision}f} ± {format_std(std, precision)}"


def print_table(title, runs, measures=("accuracy",), precision=4):
    """Prints the mean and standard deviation of each measure per model.

    The deviation is the sample standard deviation over the seeds (ddof=1),
    printed as `-` when there is one seed. The parameters are the first
    seed's; the seconds are the mean over the seeds (`-` where a row has
    `None`). Either column is left out when the rows lack its key.

    Args:
        title: the table's heading; the backend and number of seeds are
            appended.
        runs: one list per seed of dicts with the key `model` and each of
            `measures` (optionally `params` and `seconds`), in the same
            model order.
        measures: the keys of the measures to print. Defaults to
            `("accuracy",)`.
        precision: decimals of the measures: an int for all, or a dict
            `{measure: decimals}` (4 for the others). Defaults to 4.
    """
    print(f"{title}, backend {keras.backend.backend()}, {len(runs)} seed(s):")
    width = max(len(row["model"]) for row in runs[0]) + 2
    first = runs[0][0]
    has_params, has_seconds = "params" in first, "seconds" in first
    header = "".join(f"{m:>12}{'± std':>8}" for m in measures)
    header += f"{'params':>10}" * has_params + f"{'seconds':>9}" * has_seconds
    print(f"{'model':<{width}}{header}")
    for i, row in enumerate(runs[0]):
        cells = ""
        for m in measures:
            digits = precision.get(m, 4) if isinstance(precision, dict) else precision
            mean, std = mean_and_std([run[i][m] for run in runs])
            cells += f"{mean:>12.{digits}f}{format_std(std, digits, 8)}"
        if has_params:
            cells += f"{row['params']:>10}"
        if has_seconds:
            seconds = [run[i]["seconds"] for run in runs]
            cells += (f"{'-':>9}" if None in seconds
                      else f"{np.mean(seconds):>9.1f}")
        print(f"{row['model']:<{width}}{cells}")
