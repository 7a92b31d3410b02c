"""The temperature and the label weight of KD: a grid over both, over seeds.

On each task (by default the quickstart's transfer set, where most samples
reach the student through the teacher alone, and the UCI cross-modal views,
where every sample is labelled and the teacher reads another view), the
same student is trained with `KD(temperature=T)` and
`student_loss_weight=w` for every `T` and `w` of the grid, from the same
seeds as its labels-only baseline (`benchmarks/quality.py`'s tasks and
training). The results file holds, per cell, the test accuracy over seeds
(mean, standard deviation) and the gain over labels only, paired by seed
(mean, standard error). `--render RESULTS` prints the Markdown tables that
`docs/choosing-settings.md` quotes.

Run: `KERAS_BACKEND=jax python benchmarks/kd_settings.py --output
docs/results/kd_settings.json` (about 15 minutes on 2 cores). `--quick` is
a smoke run (its numbers mean nothing).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quality  # noqa: E402
from keras_distill.losses import KD  # noqa: E402

TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)
WEIGHTS = (0.0, 0.1, 0.5, 0.9)
TASKS = ("digits_transfer", "uci_cross_modal")


def study(task_name, seeds, temperatures, weights, quick):
    """The grid of one task: `{"labels_only", "grid": {T: {w: cell}}, "best"}`."""
    task = quality.TASKS[task_name]
    base, grid = [], {t: {w: [] for w in weights} for t in temperatures}
    for seed in seeds:
        setting = quality.prepare(task, seed, quick)
        base.append(quality.student_accuracy(setting))
        for t in temperatures:
            for w in weights:
                grid[t][w].append(quality.student_accuracy(setting, KD(temperature=t), w))
    cells = {str(t): {str(w): quality.paired(grid[t][w], base) for w in weights}
             for t in temperatures}
    best_t, best_w = max(
        ((t, w) for t in cells for w in cells[t]), key=lambda tw: cells[tw[0]][tw[1]]["mean"]
    )
    return {
        "description": task.description,
        "labels_only": quality.spread(base),
        "grid": cells,
        "best": {"temperature": float(best_t), "student_loss_weight": float(best_w)},
    }


def markdown_tables(report):
    """One table per task: temperature by label weight, gain ± standard error."""
    blocks = []
    for name, task in report["tasks"].items():
        weights = list(next(iter(task["grid"].values())))
        base = task["labels_only"]
        lines = [
            f"`{name}`: {task['description']}. Labels only: "
            f"{base['mean']:.4f} ± {base['std']:.4f}. Gain of KD over it "
            f"(mean ± standard error, {len(base['values'])} seeds):",
            "",
            "| temperature | " + " | ".join(f"labels weight {w}" for w in weights) + " |",
            "|---|" + "---|" * len(weights),
        ]
        for t, row in task["grid"].items():
            lines.append(f"| {float(t):g} | " + " | ".join(
                f"{c['gain_mean']:+.4f} ± {c['gain_standard_error']:.4f}" for c in row.values()
            ) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="Write the results JSON here (else stdout).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per task.")
    parser.add_argument("--tasks", nargs="+", choices=list(quality.TASKS), default=list(TASKS))
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: tiny slices, 1 epoch, 2 seeds, a 2 x 2 grid.")
    parser.add_argument("--render", metavar="RESULTS",
                        help="Print the Markdown tables of this results file.")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            sys.stdout.write(markdown_tables(json.load(f)))
        return
    seeds = range(2 if args.quick else args.seeds)
    temperatures, weights = ((1.0, 4.0), (0.1, 0.5)) if args.quick else (TEMPERATURES, WEIGHTS)
    start = time.perf_counter()
    report = {"backend": os.environ["KERAS_BACKEND"], "quick": args.quick,
              "seeds": list(seeds), "tasks": {}}
    for name in args.tasks:
        report["tasks"][name] = study(name, seeds, temperatures, weights, args.quick)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    report["seconds"] = round(time.perf_counter() - start, 1)
    quality.write_report(report, args.output)


if __name__ == "__main__":
    main()
