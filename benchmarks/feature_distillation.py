"""Step time of feature distillation: keras-distill against keras.distillation.

Same teacher, student, data (MNIST), batch size and jit setting, on the
current backend (`KERAS_BACKEND`). Both distil the logits and one hidden
layer with MSE; Keras's Distiller runs the student a second time to get the
feature, keras-distill takes it from the one forward pass. Each distiller
trains for a warm-up epoch, then the timed epochs alternate between the two
so that machine noise falls on both; the median epoch is reported. The
student trained alone on the labels is timed alongside, as the floor no
distiller can reach (it does not run the teacher). Prints one JSON object
with the per-step times and the ratio of the two distillers.

Run: `KERAS_BACKEND=jax python benchmarks/feature_distillation.py`.
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
from datasets import load_mnist  # noqa: E402


def mlp(depth, name):
    layers = [keras.Input((784,))]
    for i in range(depth):
        layers.append(keras.layers.Dense(800, activation="relu", name=f"hidden_{i}"))
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name=name)


def distiller(module, teacher, jit_compile):
    model = module.Distiller(
        teacher=teacher,
        student=mlp(2, "student"),
        distillation_losses=[
            module.LogitsDistillation(temperature=4.0),
            module.FeatureDistillation(
                loss="mse", teacher_layer_name="hidden_2", student_layer_name="hidden_1"
            ),
        ],
        distillation_loss_weights=[0.5, 0.5],
        student_loss_weight=0.5,
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs each")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jit-compile", default="auto")
    args = parser.parse_args()
    jit = {"true": True, "false": False}.get(args.jit_compile.lower(), "auto")

    (x, y), _ = load_mnist()
    n = args.steps * args.batch_size
    x = x[:n].reshape(-1, 784).astype("float32") / 255.0
    y = y[:n]
    keras.utils.set_random_seed(0)
    teacher = mlp(3, "teacher")
    # The student trained alone marks the floor: a distillation step also
    # runs the teacher forward, so it cannot be as fast.
    student_alone = mlp(2, "student")
    student_alone.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    models = {
        "keras_distillation": distiller(keras.distillation, teacher, jit),
        "keras_distill": distiller(keras_distill, teacher, jit),
        "student_alone": student_alone,
    }
    times = {name: [] for name in models}
    for model in models.values():  # warm-up: tracing and compilation
        model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - start) / args.steps)
    step_ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_distill": keras_distill.__version__,
        "jit_compile": jit,
        "batch_size": args.batch_size,
        "step_ms": {k: round(v, 3) for k, v in step_ms.items()},
        "ratio_ours_over_keras": round(
            step_ms["keras_distill"] / step_ms["keras_distillation"], 3
        ),
    }, indent=2))


if __name__ == "__main__":
    main()
