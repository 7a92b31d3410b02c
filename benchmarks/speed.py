"""Speed of distillation: keras-distill against keras.distillation and plain training.

On the current backend (`KERAS_BACKEND`), with the same teacher, students,
data, batch size and `jit_compile` setting, these ways of training a
student are timed side by side in one run:

- `plain`: `student.fit` on the labels, the floor;
- `plain_with_teacher`: the same step plus the teacher's forward pass,
  whose output the loss takes as `zero * mean(logits)` (`zero` a variable
  holding 0): the floor of any distiller that runs its teacher on every
  step. Its excess over `plain` is the cost of the teacher's forward pass,
  measured inside a training step;
- `minimal_kd`: that step with Hinton's KD loss added in a few `keras.ops`
  lines (the same temperature and weights as `ours_kd`), with no logs or
  checks: the least a distiller with a live teacher computes. Its excess
  over `plain_with_teacher` is the KD loss's own cost, which no library can
  avoid; `ours_kd` beyond it is keras-distill's bookkeeping;
- `keras_logits`: `keras.distillation.Distiller` with `LogitsDistillation`;
- `keras_feature`: the same with a `FeatureDistillation` (MSE) added;
- `ours_kd`: `keras_distill.Distiller` with `KD`, the same temperature and
  weights as `keras_logits`;
- `ours_feature`: the `keras_feature` script run on keras-distill (its
  `keras.distillation`-compatible losses), the student run once;
- `ours_fitnet_kd`: `KD` plus a `FitNet` hint through a learned connector;
- `ours_relation`: `KD` plus `RKD` on the penultimate features;
- `ours_precomputed`: `KD` from the teacher's logits, computed once by
  `teachers.precompute` and read from the data by `Precomputed()`.

Every model trains one untimed warm-up epoch (tracing, compilation), then
the timed epochs rotate over the variants, so that machine noise falls on
all of them. A variant's step time is its fastest epoch divided by its
steps (data handling included): noise only adds time, and on a shared
2-core machine whole epochs ran at twice their usual time. The ratios and
targets use these; the median epoch is reported beside them.

Peak memory is measured per variant in a fresh process (`--no-memory`
skips it; Linux only): the largest resident set, sampled every 2 ms, over
a warm-up epoch (with tracing and compilation) and one more epoch, and its
growth over the resident set just before training (the models and data
were built already).

Cases (`--case`, both by default):

- `mnist_mlp`: Hinton et al.'s MNIST MLPs, a teacher of two hidden layers of
  1,200 units and a student of two of 800. The feature losses use the
  logits layers (Keras's `FeatureDistillation` needs equal shapes); the
  hint and RKD use the second hidden layers.
- `fashion_cnn`: Fashion-MNIST CNNs of 16/32/64 channels, the teacher with
  two 3x3 convolutions per block and the student with one. The feature
  losses and the hint use the second block (14x14x32 in both); RKD uses the
  pooled features.

Prints one JSON object: per case, each variant's step time, the ratios
(ours over `keras.distillation`, ours over `plain`), the targets and
whether this run met them, the costs of the teacher's pass and of the KD
loss, the one-off `precompute` time and when it pays for itself, and the
peak memory; the backend, versions and settings.

Run: `KERAS_BACKEND=jax python benchmarks/speed.py` (`--steps 2 --repeats 1
--no-memory` for a tiny run). On a GPU: `--dtype-policy mixed_bfloat16
--jit-compile true` (the memory measured is still the host's resident set).
"""

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import keras
from keras import ops

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
sys.path.insert(0, EXAMPLES)

import keras_distill  # noqa: E402
from datasets import load_fashion_mnist  # noqa: E402
from datasets import load_mnist  # noqa: E402
from fashion_mnist import cnn  # noqa: E402
from keras_distill.losses import KD  # noqa: E402
from keras_distill.losses import RKD  # noqa: E402
from keras_distill.losses import FitNet  # noqa: E402
from keras_distill.teachers import Precomputed  # noqa: E402
from keras_distill.teachers import precompute  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TEMPERATURE = 4.0
STUDENT_LOSS_WEIGHT = 0.5
VARIANTS = (
    "plain", "plain_with_teacher", "minimal_kd", "keras_logits", "ours_kd",
    "keras_feature", "ours_feature", "ours_fitnet_kd", "ours_relation",
    "ours_precomputed",
)
# name: (numerator, denominator, the largest value the target allows)
TARGETS = {
    "logits_ours_over_keras": ("ours_kd", "keras_logits", 1.0),
    "feature_ours_over_keras": ("ours_feature", "keras_feature", 0.8),
    "precomputed_over_plain": ("ours_precomputed", "plain", 1.15),
}
OVERHEAD_TARGET = 0.05  # ours_kd beyond plain_with_teacher, over plain


def mlp(width, name):
    layers = [keras.Input((784,))]
    for i in range(2):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name=name)


def mnist_mlp(n):
    (x, y), _ = load_mnist()
    return dict(
        x=x[:n].reshape(-1, 784).astype("float32") / 255.0,
        y=y[:n],
        teacher=lambda: mlp(1200, "teacher"),
        student=lambda: mlp(800, "student"),
        feature=("logits", "logits"),
        hint=("hidden_1", "hidden_1"),
        embedding=("hidden_1", "hidden_1"),
    )


def fashion_cnn(n):
    (x, y), _ = load_fashion_mnist()
    return dict(
        x=(x[:n, ..., None] / 255.0).astype("float32"),
        y=y[:n],
        teacher=lambda: cnn((16, 32, 64), 2, "teacher"),
        student=lambda: cnn((16, 32, 64), 1, "student"),
        feature=("block2", "block2"),
        hint=("block2", "block2"),
        embedding=("pool", "pool"),
    )


CASES = {"mnist_mlp": mnist_mlp, "fashion_cnn": fashion_cnn}


class StudentAndTeacher(keras.Model):
    """A student trained by `fit`, holding a teacher for `compute_loss`."""

    def __init__(self, teacher, student, **kwargs):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.student = student

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)


class StudentWithTeacherPass(StudentAndTeacher):
    """The student's training step plus the teacher's forward pass.

    The teacher's logits enter the loss multiplied by a non-trainable
    variable that holds 0, so that no graph optimiser can prove the pass
    unused and drop it (TensorFlow's folds a multiplication by a constant
    0): the floor of a distiller whose teacher runs on every step, with no
    distillation loss to compute.
    """

    def __init__(self, teacher, student, **kwargs):
        super().__init__(teacher, student, **kwargs)
        self.zero = self.add_weight(shape=(), initializer="zeros",
                                    trainable=False, name="zero")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        logits = ops.stop_gradient(self.teacher(x, training=False))
        return loss + self.zero * ops.mean(logits)


class StudentWithTeacherKD(StudentAndTeacher):
    """The student's step plus Hinton's KD loss, and nothing else.

    `(1 - w) T^2 KL(softmax(teacher / T) || softmax(student / T))` plus `w`
    times the label loss, as `ours_kd` computes it, but written directly in
    `keras.ops`: no logged terms, no agreement, no checks.
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        teacher = ops.stop_gradient(self.teacher(x, training=False))
        log_p = ops.log_softmax(teacher / TEMPERATURE, axis=-1)
        log_q = ops.log_softmax(y_pred / TEMPERATURE, axis=-1)
        kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
        kd = TEMPERATURE**2 * ops.mean(kl)
        return STUDENT_LOSS_WEIGHT * loss + (1 - STUDENT_LOSS_WEIGHT) * kd


def build(variant, case, teacher, outputs):
    """The model of `variant` (not yet compiled) and the data it is fitted on."""
    student = case["student"]()
    x = case["x"]
    weights = dict(student_loss_weight=STUDENT_LOSS_WEIGHT)
    teacher_layer, student_layer = case["feature"]
    if variant == "plain":
        model = student
    elif variant == "plain_with_teacher":
        model = StudentWithTeacherPass(teacher, student)
    elif variant == "minimal_kd":
        model = StudentWithTeacherKD(teacher, student)
    elif variant in ("keras_logits", "keras_feature", "ours_feature"):
        module = keras.distillation if variant.startswith("keras") else keras_distill
        losses = [module.LogitsDistillation(temperature=TEMPERATURE)]
        if variant != "keras_logits":
            losses.append(module.FeatureDistillation(
                loss="mse", teacher_layer_name=teacher_layer,
                student_layer_name=student_layer,
            ))
        model = module.Distiller(
            teacher=teacher, student=student, distillation_losses=losses,
            distillation_loss_weights=[1.0] * len(losses), **weights,
        )
    elif variant == "ours_precomputed":
        model = keras_distill.Distiller(
            Precomputed(), student, KD(temperature=TEMPERATURE),
            distillation_loss_weights=[1 - STUDENT_LOSS_WEIGHT], **weights,
        )
        x = {"inputs": x, **outputs}
    else:
        losses = [KD(temperature=TEMPERATURE)]
        if variant == "ours_fitnet_kd":
            losses.append(FitNet(*case["hint"]))
        elif variant == "ours_relation":
            teacher_layer, student_layer = case["embedding"]
            losses.append(RKD(teacher_layer,
                              student_layer))
        model = keras_distill.Distiller(
            teacher, student, losses,
            distillation_loss_weights=[1 - STUDENT_LOSS_WEIGHT] * len(losses),
            **weights,
        )
    return model, x


def frozen(teacher):
    """The teacher with `trainable=False`, as `keras.distillation` sets it
    (keras-distill leaves it alone and skips its variables itself)."""
    teacher.trainable = False
    return teacher


class ResidentSetSampler:
    """Samples this process's resident set (Linux `/proc/self/statm`) every
    2 ms in a thread, keeping the largest; a context manager."""

    def __init__(self):
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.peak_mb = self.current_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def current_mb(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page_mb

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


def memory_of(case_name, variant, args):
    """Peak memory of one variant, trained in a fresh process."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--case", case_name,
         "--steps", str(args.steps), "--batch-size", str(args.batch_size),
         "--jit-compile", args.jit_compile, "--memory-probe", variant,
         *(["--dtype-policy", args.dtype_policy] if args.dtype_policy else [])],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def probe_memory(case_name, variant, args, jit):
    """Child of `memory_of`: builds one variant, trains it, prints its peak."""
    case = CASES[case_name](args.steps * args.batch_size)
    keras.utils.set_random_seed(0)
    teacher = frozen(case["teacher"]())
    outputs = precompute(teacher, case["x"]) if variant == "ours_precomputed" else {}
    model, x = build(variant, case, teacher, outputs)
    model.compile(optimizer="adam", loss=SCCE, jit_compile=jit)
    gc.collect()
    with ResidentSetSampler() as sampler:
        before = sampler.peak_mb
        for _ in range(2):  # a warm-up (with compilation) and one epoch
            model.fit(x, case["y"], batch_size=args.batch_size, epochs=1, verbose=0)
    print(json.dumps({"peak_rss_mb": round(sampler.peak_mb, 1),
                      "training_growth_mb": round(sampler.peak_mb - before, 1)}))


def time_case(case_name, args, jit):
    """Step times of every variant of one case, with ratios and targets."""
    case = CASES[case_name](args.steps * args.batch_size)
    if len(case["x"]) < args.steps * args.batch_size:
        raise SystemExit(f"--steps {args.steps} needs more than {len(case['x'])} images.")
    keras.utils.set_random_seed(0)
    # Untrained: its weights do not change the time.
    teacher = frozen(case["teacher"]())

    precompute_s = []
    for _ in range(2):  # the first call may trace or compile
        start = time.perf_counter()
        outputs = precompute(teacher, case["x"])
        precompute_s.append(time.perf_counter() - start)

    variants = [v for v in VARIANTS if v == "plain" or v in args.variants]
    models = {}
    for variant in variants:
        keras.utils.set_random_seed(1)  # the same initial student each time
        model, x = build(variant, case, teacher, outputs)
        model.compile(optimizer="adam", loss=SCCE, jit_compile=jit)
        models[variant] = (model, x)

    def epoch(variant):
        model, x = models[variant]
        gc.collect()
        start = time.perf_counter()
        model.fit(x, case["y"], batch_size=args.batch_size, epochs=1,
                  shuffle=True, verbose=0)
        return time.perf_counter() - start

    for variant in variants:  # warm-up: tracing and compilation
        epoch(variant)
    times = {variant: [] for variant in variants}
    for r in range(args.repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            times[variant].append(epoch(variant))
    # The fastest epoch: noise from other jobs on the machine only adds
    # time (on a shared 2-core machine, whole epochs ran at twice their
    # time); the median is reported beside it.
    step_ms = {v: 1000 * min(t) / args.steps for v, t in times.items()}
    median_ms = {v: 1000 * statistics.median(t) / args.steps for v, t in times.items()}

    result = {
        "params": {"teacher": teacher.count_params(),
                   "student": case["student"]().count_params()},
        "step_ms": {v: round(t, 3) for v, t in step_ms.items()},
        "median_step_ms": {v: round(t, 3) for v, t in median_ms.items()},
        **ratios_and_targets(step_ms),
        "precompute_s": {"first_call": round(precompute_s[0], 4),
                         "second_call": round(precompute_s[1], 4)},
    }
    if "ours_kd" in step_ms and "ours_precomputed" in step_ms:
        saved_s = (step_ms["ours_kd"] - step_ms["ours_precomputed"]) * args.steps / 1000
        # Epochs of live-teacher KD after which `precompute` has paid off.
        result["precompute_break_even_epochs"] = (
            round(precompute_s[0] / saved_s, 2) if saved_s > 0 else None
        )
    if args.memory:
        result["memory_mb"] = {v: memory_of(case_name, v, args) for v in variants}
    return result


def ratios_and_targets(step_ms):
    """Each variant over `plain`, and the targets whose variants ran."""
    plain = step_ms["plain"]
    ratios = {f"{v}_over_plain": t / plain for v, t in step_ms.items() if v != "plain"}
    targets = {}
    for name, (ours, theirs, limit) in TARGETS.items():
        if ours in step_ms and theirs in step_ms:
            ratios[name] = step_ms[ours] / step_ms[theirs]
            targets[name] = _target(ratios[name], limit)
    result = {}
    if "plain_with_teacher" in step_ms:
        result["teacher_forward_ms"] = round(step_ms["plain_with_teacher"] - plain, 3)
        if "minimal_kd" in step_ms:
            # The overhead target's measure, for the least a KD step computes.
            kd_loss = step_ms["minimal_kd"] - step_ms["plain_with_teacher"]
            result["kd_loss_ms"] = round(kd_loss, 3)
            result["minimal_kd_overhead_over_plain"] = round(kd_loss / plain, 3)
        if "ours_kd" in step_ms:
            overhead = (step_ms["ours_kd"] - step_ms["plain_with_teacher"]) / plain
            targets["overhead_beyond_teacher_over_plain"] = _target(
                overhead, OVERHEAD_TARGET
            )
    result["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    result["targets"] = targets
    return result


def _target(value, limit):
    """A target as reported: met by the value shown (rounded to 3 places)."""
    value = round(value, 3)
    return {"value": value, "at_most": limit, "met": value <= limit}


def versions():
    backend = keras.backend.backend()
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_distill": keras_distill.__version__,
        backend: importlib.import_module(backend).__version__,
    }


def devices():
    """The devices the backend computes on, as it names them."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        count = torch.cuda.device_count()
        return [torch.cuda.get_device_name(i) for i in range(count)] or ["cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), nargs="+",
                        default=list(CASES))
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs each")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jit-compile", default="auto",
                        help="true, false or auto (Keras's default)")
    parser.add_argument("--dtype-policy", default=None,
                        help="a Keras dtype policy for every model, e.g. "
                        "mixed_bfloat16 on a GPU (default: float32)")
    parser.add_argument("--variants", choices=VARIANTS, nargs="+",
                        default=list(VARIANTS),
                        help="time these only (the ratios and targets need "
                        "their variants)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the per-variant memory runs")
    parser.add_argument("--memory-probe", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1.")
    jit = {"true": True, "false": False}.get(args.jit_compile.lower(), "auto")
    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    if args.memory_probe:
        probe_memory(args.case[0], args.memory_probe, args, jit)
        return
    print(json.dumps({
        "backend": keras.backend.backend(),
        "versions": versions(),
        "cpus": os.cpu_count(),
        "jit_compile": jit,
        "dtype_policy": keras.config.dtype_policy().name,
        "devices": devices(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "cases": {name: time_case(name, args, jit) for name in args.case},
    }, indent=2))


if __name__ == "__main__":
    main()
