"""Exact operation counts of one distillation step, side by side (PyTorch).

Step times on a shared machine move by several percent between runs; the
number of operations a step dispatches does not. This script counts, with a
`TorchDispatchMode`, every ATen operation of one `train_on_batch` step on
the MNIST MLPs of `benchmarks/speed.py` (a 2x1200 teacher, a 2x800
student, batch 128), after three warm-up steps, for:

- `plain`: the student on the labels;
- `plain_with_teacher`: that step plus the teacher's forward pass;
- `minimal_kd`: that step plus Hinton's KD in a few `keras.ops` lines, no
  logs or checks: the least a live-teacher KD step computes;
- `keras_logits`: `keras.distillation.Distiller` with `LogitsDistillation`;
- `ours_kd`: `keras_distill.Distiller` with `KD`, every log and check on.

It prints one JSON object: the counts, `ours_kd` and `keras_logits` over
`minimal_kd`, and whether `ours_kd` is within the target (at most 1.20
times the minimal step), with the operations of `ours_kd` by kind. The
target was 1.10 (met at 1.08) until the step began to skip updates whose
gradients are not finite, which the minimal step does not: one reduction
per gradient, the test and the count of skipped steps, 15 operations.

Run: `KERAS_BACKEND=torch python benchmarks/op_count.py` (`--batch-size`,
128 by default: the first MNIST training images).
"""

import argparse
import collections
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed  # noqa: E402

VARIANTS = ("plain", "plain_with_teacher", "minimal_kd", "keras_logits", "ours_kd")
TARGET = 1.20  # ours_kd over minimal_kd, at most (see the docstring)


def count_step(model, x, y):
    """The ATen operations of one `train_on_batch`, by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    for _ in range(3):  # building, tracing and the optimizer's slots
        model.train_on_batch(x, y)
    with Counter() as counter:
        model.train_on_batch(x, y)
    return counter.ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if keras.backend.backend() != "torch":
        raise SystemExit("op_count.py counts PyTorch operations: set KERAS_BACKEND=torch.")
    case = speed.mnist_mlp(args.batch_size)
    y = case["y"]
    keras.utils.set_random_seed(0)
    teacher = speed.frozen(case["teacher"]())
    counts, ours = {}, None
    for variant in VARIANTS:
        keras.utils.set_random_seed(1)
        model, data = speed.build(variant, case, teacher, {})
        model.compile(optimizer="adam", loss=speed.SCCE, jit_compile=False)
        ops = count_step(model, data, y)
        counts[variant] = sum(ops.values())
        if variant == "ours_kd":
            ours = ops
    ratio = counts["ours_kd"] / counts["minimal_kd"]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "versions": speed.versions(),
        "batch_size": args.batch_size,
        "ops_per_step": counts,
        "ours_kd_over_minimal_kd": round(ratio, 3),
        "keras_logits_over_minimal_kd": round(
            counts["keras_logits"] / counts["minimal_kd"], 3
        ),
        "target": {"at_most": TARGET, "met": ratio <= TARGET},
        "ours_kd_by_op": dict(ours.most_common()),
    }, indent=2))


if __name__ == "__main__":
    main()
