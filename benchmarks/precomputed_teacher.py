"""Epoch time of distillation from precomputed teacher outputs.

Three ways to train the same student on the same data, batch size and jit
setting, on the current backend (`KERAS_BACKEND`):

- `student_alone`: `student.fit` on the labels; the floor, as no
  distiller can be faster than a step that does not run a teacher;
- `live_teacher`: `keras_distill.Distiller` with the teacher run on every
  step and `KD` (T = 4);
- `precomputed`: the same, with the teacher's logits computed once by
  `keras_distill.teachers.precompute` and read from the data by a
  `Precomputed()` teacher (`{"inputs": x, **outputs}`).

Each model trains for a warm-up epoch (tracing and compilation), then the
timed epochs alternate between the three, in a rotating order, so that
machine noise falls on all of them; the median epoch is reported, with the
time per step (the epoch divided by its steps, data handling included).
The one-off cost of `precompute` over the same samples is timed as well:
its first call (which includes any tracing) and the median of the timed
repeats. `break_even_epochs` is that first call divided by the time
precomputation saves per epoch: after that many epochs it has paid for
itself.

Cases (`--case`):

- `mnist_mlp` (default): Hinton et al.'s MNIST MLPs, a teacher of two
  hidden layers of 1,200 units and a student of two of 800;
- `fashion_cnn`: the Fashion-MNIST tutorials' CNNs, a teacher of three
  blocks of two 3x3 convolutions (16/32/64 channels) and a student of
  8/16/32 channels with one convolution per block.

Prints one JSON object. Run:
`KERAS_BACKEND=jax python benchmarks/precomputed_teacher.py`
(`--steps 3 --repeats 1` for a tiny run).
"""

import argparse
import json
import os
import statistics
import sys
import time

import keras

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import keras_distill  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from datasets import load_mnist  # noqa: E402
from keras_distill.losses import KD  # noqa: E402
from keras_distill.teachers import Precomputed  # noqa: E402
from keras_distill.teachers import precompute  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
VARIANTS = ("student_alone", "live_teacher", "precomputed")


def mlp(width, name):
    layers = [keras.Input((784,))]
    for i in range(2):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name=name)


def mnist_mlp(n):
    (x, y), _ = load_mnist()
    x = x[:n].reshape(-1, 784).astype("float32") / 255.0
    return x, y[:n], lambda: mlp(1200, "teacher"), lambda: mlp(800, "student")


def fashion_cnn(n):
    from fashion_mnist import cnn

    (x, y), _ = load_fashion_mnist()
    x = (x[:n, ..., None] / 255.0).astype("float32")
    return (
        x, y[:n],
        lambda: cnn((16, 32, 64), 2, "teacher"),
        lambda: cnn((8, 16, 32), 1, "student"),
    )


CASES = {"mnist_mlp": mnist_mlp, "fashion_cnn": fashion_cnn}


def ratio(a, b):
    return round(a / b, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="mnist_mlp")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs each")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jit-compile", default="auto")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1.")
    jit = {"true": True, "false": False}.get(args.jit_compile.lower(), "auto")

    x, y, teacher_factory, student_factory = CASES[args.case](
        args.steps * args.batch_size
    )
    if len(x) < args.steps * args.batch_size:
        parser.error(f"--steps {args.steps} needs more than the {len(x)} images.")
    keras.utils.set_random_seed(0)
    teacher = teacher_factory()  # untrained: its weights do not change the time

    precompute_times = []
    for _ in range(1 + args.repeats):  # the first call may trace or compile
        start = time.perf_counter()
        outputs = precompute(teacher, x)
        precompute_times.append(time.perf_counter() - start)

    def compiled(model):
        model.compile(optimizer="adam", loss=SCCE, jit_compile=jit)
        return model

    models, data = {}, {}
    for name in VARIANTS:
        keras.utils.set_random_seed(1)  # the same initial student each time
        student = student_factory()
        if name == "student_alone":
            models[name], data[name] = compiled(student), x
        elif name == "live_teacher":
            models[name] = compiled(keras_distill.Distiller(teacher, student, KD(4.0)))
            data[name] = x
        else:
            models[name] = compiled(keras_distill.Distiller(Precomputed(), student, KD(4.0)))
            data[name] = {"inputs": x, **outputs}

    def epoch(name):
        start = time.perf_counter()
        models[name].fit(
            data[name], y, batch_size=args.batch_size, epochs=1, shuffle=True,
            verbose=0,
        )
        return time.perf_counter() - start

    for name in VARIANTS:  # warm-up: tracing and compilation
        epoch(name)
    times = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
        for name in order:
            times[name].append(epoch(name))
    epoch_s = {name: statistics.median(t) for name, t in times.items()}
    saved = epoch_s["live_teacher"] - epoch_s["precomputed"]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_distill": keras_distill.__version__,
        "case": args.case,
        "jit_compile": jit,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "params": {
            "teacher": teacher.count_params(),
            "student": models["student_alone"].count_params(),
        },
        "epoch_s": {k: round(v, 4) for k, v in epoch_s.items()},
        "step_ms": {k: round(1000 * v / args.steps, 3) for k, v in epoch_s.items()},
        "ratios": {
            "precomputed_over_live": ratio(epoch_s["precomputed"], epoch_s["live_teacher"]),
            "precomputed_over_student_alone": ratio(
                epoch_s["precomputed"], epoch_s["student_alone"]
            ),
            "live_over_student_alone": ratio(
                epoch_s["live_teacher"], epoch_s["student_alone"]
            ),
        },
        "precompute_s": {
            "first_call": round(precompute_times[0], 4),
            "median": round(statistics.median(precompute_times[1:]), 4),
        },
        "break_even_epochs": (
            round(precompute_times[0] / saved, 2) if saved > 0 else None
        ),
    }, indent=2))


if __name__ == "__main__":
    main()
