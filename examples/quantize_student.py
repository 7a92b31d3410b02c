"""Distil, then quantize: a small Fashion-MNIST student shrunk again to int8.

Tutorial. Distillation and quantization shrink a model in two different
ways, and they compose: distillation trains a model with fewer parameters,
quantization stores each parameter in fewer bits. This script does both,
in that order:

1. A teacher CNN (`cnn_wide` of `fashion_mnist_ensemble.py`: two 3x3
   convolutions of 32 and 64 channels with max pooling, a 128-unit `Dense`
   layer on the flattened map, 422k parameters) is trained on Fashion-MNIST's
   labels.
2. A student MLP (one hidden `Dense` layer of 128 ReLU units on the raw
   pixels, 102k parameters, all of them in `Dense` layers) is distilled from
   it with `keras_distill.Distiller` and Hinton's `KD` (T = 4, half label
   loss, half KD). Both are trained as in `fashion_mnist.py` (Adam with a
   cosine-decayed learning rate, batch 128, the same seed).
3. The distilled student is saved as a `.keras` file, loaded back as an
   independent copy, and the copy is quantized with Keras's own
   `model.quantize("int8")`; the float student is kept as it was.

What `quantize("int8")` does (Keras 3.15). It works in place: it walks the
model's layers and, in each `Dense`, `EinsumDense` and `Embedding` layer,
replaces the float32 kernel by an int8 kernel plus one float32 scale per
output unit (symmetric abs-max: each unit's column of weights is scaled so
that its largest magnitude maps to 127, then rounded). Biases stay float32.
The layer's dtype policy becomes `"int8_from_float32"`, the int8 kernel is
not trainable, and a layer refuses to be quantized twice; there is no way
back to float, which is why the script quantizes a copy. Layers without int8
support (convolutions, batch normalisation, ...) are left in float32 with a
warning: that is why the student here is all `Dense`, so that all of its
weights shrink. (The script passes `filters` to try only layers that have
weights: `InputLayer` and `Flatten` would each warn too.) At inference
each quantized `Dense` also quantizes its input to int8, per sample (abs-max over the features), multiplies int8 by int8
into int32 and rescales the result to float32: the activations are
quantized on the fly, there is no calibration set. The quantized model
saves to and loads from `.keras` like any other.

What is measured, per model (teacher for reference, float student, int8
student), by `keras_distill.report` plus two sizes:

- test accuracy, and for the int8 student its agreement with the float
  student (the fraction of test images where their top-1 classes match);
- `weights_KB`: the bytes the weights take in memory, each variable's
  element count times its dtype's size (int8: 1 byte, float32: 4);
- `file_KB`: the size of the model's `.keras` file (zipped: the JSON config,
  the weights in HDF5, metadata), saved without optimizer state;
- latency: the median time of one `predict_on_batch` call on 256 test
  images, over 20 calls, after a warm-up call that traces or compiles.

Measured on seed 0 alone (`--seeds 0`) with the other defaults (first
20,000 training images, 8 epochs each, all 10,000 test images), Keras
3.15.1, on 2 CPU cores shared with other jobs (wall time: JAX 4 min, an
earlier identical run 6 min under more load; TensorFlow 2 min; PyTorch
20.5 min, 18.5 of them the teacher's convolutions):

    test accuracy   teacher  float32 student  int8 student  agreement
    jax             0.9068   0.8578           0.8569        0.997
    tensorflow      0.9062   0.8591           0.8598        0.996
    torch           0.9034   0.8592           0.8584        0.996

    latency (ms)    teacher  float32 student  int8 student
    jax             44.0     0.92             0.70
    tensorflow      41.9     2.22             3.46
    torch           61.9     1.02             2.89

The sizes are the same on every backend: the teacher's weights take
1,686.6 KB (its file 1,717.5 KB), the float student's 407.1 KB (file
424.3 KB), the int8 student's 102.7 KB (file 121.2 KB). So int8 makes the
student's weights 3.96 times smaller (one byte per weight instead of four;
the per-unit scales and the float32 biases are 138 values each) and its
file 3.5 times smaller (the JSON config and the HDF5 bookkeeping, about
18 KB, do not shrink), for an accuracy change under 0.1 points and the
same top-1 class as the float student on 99.6-99.7% of the test images.
Distillation and quantization together take the teacher's 1.7 MB of
weights to 0.1 MB at 5 points of accuracy, nearly all of them the cost of
the smaller student (it is 4 times smaller and sees no convolutions);
whether KD beat training the same student on the labels alone is not
measured here (see `fashion_mnist.py` and `mnist_hinton.py`).

The int8 student is not faster on CPU. Keras does not dequantize the
kernel here: each call quantizes the inputs, multiplies int8 by int8 into
int32 with `keras.ops.matmul` and rescales, so the speed is that of the
backend's integer matmul plus a few extra elementwise ops. On JAX (XLA)
the integer matmul was about as fast as float32's, and the int8 student
ran at the float student's speed (0.76 and 1.07 times its latency in two
runs). TensorFlow's int8 matmul took 1.6 ms against 0.7 ms for float32 at
this layer's shape (256 x 784 by 784 x 128), and the int8 student was 1.6
times slower. PyTorch has no int8 CPU path in Keras (`torch._int_mm` is
used on CUDA only): both operands are cast to int32 and multiplied in
int32, about 5 times slower than float32 here (1.4 against 0.29 ms), and
the int8 student was 2.8 times slower. And at 1-3 ms a batch the student is
so small that fixed per-op costs weigh as much as arithmetic. On this
machine int8 buys memory and disk, not CPU speed. Latencies on shared
cores vary from run to run by a few tenths of a millisecond for the
student: read ratios under about 1.3 as no difference. One seed.

Run: `KERAS_BACKEND=jax python examples/quantize_student.py` (`--quick` for
a smoke run on seed 0; seeds 0, 1 and 2 by default, `--seeds` for others:
each number printed is the mean and standard deviation over them;
`--report DIR` also writes `keras_distill.report`'s table and plot and the
three `.keras` files of each seed to DIR/seed_<seed>). The data is
fetched as `examples/datasets.py` describes.
"""

import argparse
import os
import sys
import tempfile

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_distill  # noqa: E402
from fashion_mnist import load  # noqa: E402
from fashion_mnist import train_all  # noqa: E402
from fashion_mnist_ensemble import cnn_wide_teacher  # noqa: E402
from keras_distill.losses import KD  # noqa: E402
from results import add_seeds_argument  # noqa: E402
from results import chosen_seeds  # noqa: E402
from results import mean_std_text  # noqa: E402
from results import print_table  # noqa: E402

REPORT_FILES = ("report.md", "models.png", "teacher.keras",
                "student_float32.keras", "student_int8.keras")


def student_model():
    """The student: an MLP, one hidden layer of 128 ReLU units, ten logits.

    Every weight is in a `Dense` layer, which `quantize("int8")` supports.
    """
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ], name="student")


def weight_bytes(model):
    """The bytes `model`'s weights take in memory.

    Each variable's element count times the size of its dtype: 4 per
    float32 value, 1 per int8 value.

    Args:
        model: a built Keras model.

    Returns:
        An int, summed over `model.weights` (trainable and not).
    """
    return sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )


def save(model, path):
    """Saves `model` as a `.keras` file at `path` without optimizer state;
    returns the file's size in bytes.

    A compiled model's file would also hold its optimizer's variables (for
    Adam, two per weight), which inference does not need, so a compiled
    model is saved through an uncompiled copy.
    """
    if getattr(model, "optimizer", None) is not None:
        # From the config, not `keras.models.clone_model`, which (in Keras
        # 3.15) compiles the copy of a compiled `Sequential` model too.
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy
    model.save(path)
    return os.path.getsize(path)


def quantized_copy(model, folder, name="student"):
    """Saves `model`, loads it back and quantizes the loaded copy to int8.

    `model.quantize` changes a model in place and for good, so it is called
    on a copy read from the saved file; `model` keeps its float weights.

    Args:
        model: a built Keras model.
        folder: where `{name}_float32.keras` and `{name}_int8.keras` are
            written.
        name: the files' prefix. Defaults to `"student"`.

    Returns:
        `(int8_model, sizes)`, with `sizes` a dict of the two files' sizes in
        bytes, `"float32"` and `"int8"`.
    """
    float_path = os.path.join(folder, f"{name}_float32.keras")
    int8_path = os.path.join(folder, f"{name}_int8.keras")
    sizes = {"float32": save(model, float_path)}
    copy = keras.saving.load_model(float_path, compile=False)
    # Only layers with weights: the others (`InputLayer`, `Flatten`) have
    # nothing to quantize, and each would raise a warning.
    copy.quantize("int8", filters=lambda layer: bool(layer.weights))
    sizes["int8"] = save(copy, int8_path)
    return copy, sizes


def check_report_dir(report_dir):
    """Raises `FileExistsError` when `report_dir` holds a report or a
    `.keras` file of an earlier run (see `REPORT_FILES`); `None` passes."""
    existing = [f for f in REPORT_FILES
                if report_dir and os.path.exists(os.path.join(report_dir, f))]
    if existing:
        raise FileExistsError(
            f"report_dir={report_dir!r} holds {existing} already; give another "
            "folder."
        )


def run(epochs=8, teacher_epochs=8, train_size=20000, test_size=None, seed=0,
        report_dir=None, verbose=0):
    """Trains the teacher, distils the student, quantizes it; measures all three.

    Args:
        epochs: epochs of the student. Defaults to 8.
        teacher_epochs: epochs of the teacher. Defaults to 8.
        train_size: train on the first `train_size` training images (all
            when `None`). Defaults to 20,000.
        test_size: measure on the first `test_size` test images. Defaults to
            `None`: all 10,000.
        seed: the random seed of both models. Defaults to 0.
        report_dir: a folder for `keras_distill.report`'s `report.md` and
            `models.png` and the three `.keras` files; created if needed.
            Defaults to `None`: the files go to a temporary folder, deleted
            at the end.
        verbose: Keras verbosity. Defaults to 0.

    Returns:
        `(rows, models)`. `rows`: one dict per model (`"teacher"`,
        `"student (float32)"`, `"student (int8)"`) with `model`, `accuracy`,
        `params`, `latency_ms` (from `keras_distill.report`), `weight_bytes`,
        `file_bytes`, `agreement` (top-1 agreement with the float student)
        and `seconds` (training; `None` for the int8 student). `models`:
        the three Keras models under the same names.

    Raises:
        FileExistsError: when `report_dir` holds a report or a `.keras`
            file of an earlier run; checked before any training.
    """
    check_report_dir(report_dir)  # refused before training, not after
    data = load(train_size, test_size)
    x_test, y_test = data[1]
    trained = {}

    def keep(model):
        # `train_all` measures each model it trains; here it only hands the
        # model over, and the measures come from `keras_distill.report`.
        trained[model.name] = model
        return {}

    training = train_all(
        cnn_wide_teacher, student_model,
        [("student (float32)", KD(temperature=4.0), None)],
        data, epochs, teacher_epochs, keep, seed=seed, verbose=verbose,
    )
    teacher, student = trained["cnn_wide"], trained["student"]

    with tempfile.TemporaryDirectory() as tmp:
        folder = report_dir or tmp
        os.makedirs(folder, exist_ok=True)
        int8_student, sizes = quantized_copy(student, folder)
        file_bytes = {
            "teacher": save(teacher, os.path.join(folder, "teacher.keras")),
            "student (float32)": sizes["float32"],
            "student (int8)": sizes["int8"],
        }
    models = {
        "teacher": teacher,
        "student (float32)": student,
        "student (int8)": int8_student,
    }
    rows = keras_distill.report(models, x_test, y_test, path=report_dir)

    def top1(model):
        return np.asarray(model.predict(x_test, batch_size=1000, verbose=0)).argmax(-1)

    float_classes = top1(student)
    seconds = {"teacher": training[0]["seconds"],
               "student (float32)": training[1]["seconds"]}
    for row in rows:
        name = row["model"]
        row["weight_bytes"] = weight_bytes(models[name])
        row["file_bytes"] = file_bytes[name]
        row["agreement"] = float(np.mean(top1(models[name]) == float_classes))
        row["seconds"] = seconds.get(name)
    return rows, models


# The printed measures: their columns, the keys of `run`'s rows they come
# from, the scale applied and the decimals.
COLUMNS = (("accuracy", "accuracy", 1, 4), ("agreement", "agreement", 1, 3),
           ("weights_KB", "weight_bytes", 1e-3, 1), ("file_KB", "file_bytes", 1e-3, 1),
           ("ms/batch", "latency_ms", 1, 2))


def print_results(runs):
    """Prints the rows of `run`, one list per seed, as a table with the
    backend: the mean and standard deviation over the seeds of each
    measure and of the int8 / float32 student ratios."""
    table = [
        [{"model": r["model"], "params": r["params"], "seconds": r["seconds"],
          **{column: r[key] * scale for column, key, scale, _ in COLUMNS}}
         for r in rows]
        for rows in runs
    ]
    print_table("Fashion-MNIST, distil then quantize", table,
                measures=[column for column, *_ in COLUMNS],
                precision={column: digits for column, _, _, digits in COLUMNS})
    students = [{r["model"]: r for r in rows} for rows in runs]

    def ratio(key, precision, difference=False):
        values = [s["student (int8)"][key] - s["student (float32)"][key]
                  if difference else
                  s["student (int8)"][key] / s["student (float32)"][key]
                  for s in students]
        return mean_std_text(values, precision, sign=difference)

    print(f"int8 / float32 student: weights {ratio('weight_bytes', 3)}, "
          f"file {ratio('file_bytes', 3)}, latency {ratio('latency_ms', 2)}, "
          f"accuracy {ratio('accuracy', 4, difference=True)}")
    print("agreement: top-1 agreement with the float32 student; ms/batch: "
          "median predict_on_batch time on 256 images; weights_KB: in memory; "
          "file_KB: the .keras file; seconds: training.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=20000)
    add_seeds_argument(parser)
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="write report.md, models.png and the .keras "
                        "files of each seed to DIR/seed_<seed>.")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch on 512 training images, tested on "
                        "1,000, seed 0 unless --seeds: a smoke run.")
    args = parser.parse_args()
    report_dirs = {seed: args.report and os.path.join(args.report, f"seed_{seed}")
                   for seed in chosen_seeds(args)}
    for report_dir in report_dirs.values():  # before any training
        check_report_dir(report_dir)
    runs = [
        run(
            epochs=1 if args.quick else args.epochs,
            teacher_epochs=1 if args.quick else args.teacher_epochs,
            train_size=512 if args.quick else args.train_size,
            test_size=1000 if args.quick else None,
            seed=seed,
            report_dir=report_dir,
        )[0]
        for seed, report_dir in report_dirs.items()
    ]
    print_results(runs)


if __name__ == "__main__":
    main()
