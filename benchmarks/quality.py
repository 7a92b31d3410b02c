"""Does distillation win? Students trained with labels only and with each
logit method, on four real tasks, over seeds, paired.

Each task trains a teacher per seed, then the same student from the same
seed once per method: the labels alone, KD, KD on standardized logits,
DKD, DIST and CTKD. Every student of a task has the same optimizer (Adam,
cosine-decayed learning rate), epochs and batch size. The tasks:

- `fashion_mnist_cnn`: a 4-block CNN teacher and a 2-block, 8-16 wide CNN
  student on 10,000 Fashion-MNIST images (test: the 10,000 test images);
- `uci_cross_modal`: a CNN on the 16x15 pixels teaches an MLP that reads
  only the 76 Fourier coefficients of the same handwritten digits (UCI
  Multiple Features, 1,000 training digits, 1,000 test);
- `fine_foods_text`: a 1-D CNN over word embeddings teaches a bag of words
  (embedding average) to tell "great" fine-food reviews from the others
  (4,000 training reviews, 1,000 test);
- `digits_transfer`: the quickstart's transfer set: 10% of the digits
  labelled, the rest `UNLABELLED`, an MLP teacher trained on all labels.

The method settings are the papers' defaults where they apply (listed in
the results as `methods`), not tuned per task. The gain of a method is its
accuracy minus the labels-only student's, paired by seed; it counts as
significant when its mean exceeds two standard errors.

Run: `KERAS_BACKEND=jax python benchmarks/quality.py --output
docs/results/quality.json` (within an hour on 2 cores), then
`python benchmarks/quality.py --render docs/results/quality.json` writes the
documentation page `docs/quality.md` and its plot. `--quick` is a smoke
run on tiny slices (its numbers mean nothing).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
sys.path.insert(0, HERE)

import keras_distill  # noqa: E402
from keras_distill.losses import CTKD  # noqa: E402
from keras_distill.losses import DIST  # noqa: E402
from keras_distill.losses import DKD  # noqa: E402
from keras_distill.losses import KD  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
PAGE = os.path.join(os.path.dirname(HERE), "docs", "quality.md")
PLOT = os.path.join(os.path.dirname(HERE), "docs", "quality.png")


# -- Methods -----------------------------------------------------------------

# name: (description, losses factory of the student epochs, student loss weight)
METHODS = {
    "labels_only": ("the student on the labels alone", None, None),
    "kd": ("KD, T = 4; labels 0.1, KD 0.9 (Hinton et al.)",
           lambda epochs: KD(temperature=4.0), 0.1),
    "kd_standardized": ("KD on z-scored logits, T = 2; labels 0.1, KD 0.9 (Sun et al.)",
                        lambda epochs: KD(temperature=2.0, standardize=True), 0.1),
    "dkd": ("DKD, alpha 1, beta 2, T = 4; labels 0.5, DKD 0.5 (Zhao et al.)",
            lambda epochs: DKD(alpha=1.0, beta=2.0, temperature=4.0), 0.5),
    "dist": ("DIST, beta 1, gamma 1, T = 1; labels 0.5, DIST 0.5 (Huang et al.)",
             lambda epochs: DIST(), 0.5),
    "ctkd": ("CTKD, T in (1, 21), curriculum over half the epochs; labels 0.1, "
             "KD 0.9 (Li et al.)",
             lambda epochs: CTKD(curriculum_epochs=max(1, epochs // 2)), 0.1),
}


# -- Tasks -------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """A teacher, a student and their data.

    `data(quick)` returns `(x_train, y_train, x_test, y_test, labelled)`,
    `labelled` a mask of the training samples whose label the students may
    use (the others are `UNLABELLED` to the distillers), or `None` for all.
    `wrap_teacher(teacher)` wraps the teacher for a student that reads
    other inputs (a `CrossModal` teacher); `teacher_inputs(x)` and
    `student_inputs(x)` give each model's own inputs.
    """

    description: str
    data: object
    teacher: object
    student: object
    epochs: int
    teacher_epochs: int
    batch_size: int = 64
    learning_rate: float = 3e-3
    wrap_teacher: object = None
    teacher_inputs: object = None
    student_inputs: object = None


def fashion_mnist_data(quick):
    import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load(
        512 if quick else 10000, 256 if quick else None
    )
    return x_train, y_train, x_test, y_test, None


def fashion_teacher():
    import fashion_mnist

    # 6 epochs of 79 steps: moving statistics of momentum 0.99 would lag.
    return fashion_mnist.cnn([32, 64, 128, 128], 2, "teacher", momentum=0.9)


def fashion_student():
    import fashion_mnist

    return fashion_mnist.cnn([8, 16], 1, "student", momentum=0.9)


def uci_data(quick):
    import uci_cross_modal

    data = uci_cross_modal.load()
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    if quick:
        x_train = {k: v[:200] for k, v in x_train.items()}
        x_test = {k: v[:200] for k, v in x_test.items()}
        y_train, y_test = y_train[:200], y_test[:200]
    return x_train, y_train, x_test, y_test, None


def uci_teacher():
    import uci_cross_modal

    return uci_cross_modal.teacher_model()


def uci_student():
    import uci_cross_modal

    return uci_cross_modal.student_model("fourier", 76)


def uci_wrap(teacher):
    return keras_distill.teachers.CrossModal(
        teacher, teacher_input="pixels", student_input="fourier"
    )


VOCABULARY, LENGTH = 5000, 128


def fine_foods_data(quick):
    import text
    from datasets import load_fine_foods

    (texts, y_train), (test_texts, y_test) = load_fine_foods()
    if quick:
        texts, y_train, test_texts, y_test = texts[:256], y_train[:256], test_texts[:128], y_test[:128]
    vocab = text.vocabulary(texts, VOCABULARY)

    def encode(reviews):
        ids = np.full((len(reviews), LENGTH), text.PAD, "int32")
        for row, review in enumerate(reviews):
            tokens = text.word_ids(review, vocab)[:LENGTH]
            ids[row, : len(tokens)] = tokens
        return ids

    return encode(texts), y_train, encode(test_texts), y_test, None


def fine_foods_teacher():
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 64, mask_zero=False)(inputs)
    for _ in range(2):
        x = keras.layers.Conv1D(128, 5, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="teacher")


def fine_foods_student():
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="student")


def digits_data(quick):
    import quickstart

    x_train, x_test, y_train, y_test = quickstart.load_data()
    return x_train, y_train, x_test, y_test, "transfer"


def digits_teacher():
    import quickstart

    return quickstart.mlp([256, 256], "teacher", dropout=0.3)


def digits_student():
    import quickstart

    return quickstart.mlp([32], "student")


TASKS = {
    "fashion_mnist_cnn": Task(
        "Fashion-MNIST, 10,000 images: CNN (4 blocks) -> CNN (2 blocks, 8-16 wide)",
        fashion_mnist_data, fashion_teacher, fashion_student,
        epochs=6, teacher_epochs=6, batch_size=128,
    ),
    "uci_cross_modal": Task(
        "UCI digits, 1,000: CNN on pixels -> MLP on the Fourier view",
        uci_data, uci_teacher, uci_student, epochs=60, teacher_epochs=30,
        wrap_teacher=uci_wrap, teacher_inputs=lambda x: x["pixels"],
        student_inputs=lambda x: x["fourier"],
    ),
    "fine_foods_text": Task(
        "Fine-food reviews, 4,000: word CNN -> bag of words (8-d embeddings)",
        fine_foods_data, fine_foods_teacher, fine_foods_student,
        epochs=8, teacher_epochs=4,
    ),
    "digits_transfer": Task(
        "Digits, 126 labelled + 1,131 unlabelled: MLP (all labels) -> MLP (32)",
        digits_data, digits_teacher, digits_student, epochs=30, teacher_epochs=30,
        batch_size=32,
    ),
}


# What the literature says of each task, for the page: why a method should
# win there or not. The page adds what the run measured.
WHY = {
    "fashion_mnist_cnn": (
        "A capacity-limited student of a much better teacher, the setting "
        "where Hinton et al. (2015) expect soft targets to pay; a teacher "
        "far ahead of a tiny student can also be too far ahead to follow "
        "(the capacity gap of Cho and Hariharan, 2019, and Mirzadeh et al., "
        "2020), and six epochs are short: Beyer et al. (2022) find that "
        "distillation needs long schedules to match its teacher. Sun et "
        "al. (2024) argue that a temperature shared by both models asks "
        "the student to match the range of the teacher's logits as well "
        "as their relations, which a small student cannot; z-scoring "
        "both models' logits (`kd_standardized`) asks only the relations."
    ),
    "uci_cross_modal": (
        "The student reads a view that lacks part of what the teacher "
        "sees: the Fourier descriptors are rotation invariant and cannot "
        "tell a 6 from a 9, which the pixels can. Cross-modal distillation "
        "transfers only what both views share (the modality focusing "
        "hypothesis of Xue et al., 2023), so most of the gap to the "
        "teacher is out of the student's reach."
    ),
    "fine_foods_text": (
        "Two classes: the teacher's soft target is one number per review, "
        "its confidence, so the relations between wrong classes that carry "
        "most of the dark knowledge (Hinton et al., 2015; Tang et al., "
        "2020) do not exist, and a bag of words cannot represent the word "
        "order the convolutional teacher reads. DIST's inter-class term "
        "is constant with two classes (the Pearson correlation of two "
        "scores is +1 or -1), and its intra-class term is blind to a "
        "shift of the student's scores: its 0.6580 on every seed is the "
        "share of the majority class among the test reviews, what a "
        "student that always predicts that class scores."
    ),
    "digits_transfer": (
        "Limited labels: nine in ten training digits have no label, and "
        "only the teacher's soft targets teach the student on them, the "
        "transfer-set setting of Bucila et al. (2006) and Hinton et al. "
        "(2015), where soft targets on a small part of the data did almost "
        "as well as hard targets on all of it."
    ),
}


# -- Training ----------------------------------------------------------------


def fit(model, x, y, epochs, task):
    steps = -(-len(y) // task.batch_size)
    model.compile(
        keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(task.learning_rate, epochs * steps)
        ),
        SCCE,
    )
    model.fit(x, y, epochs=epochs, batch_size=task.batch_size, verbose=0)


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=512).argmax(-1) == y).mean())


@dataclasses.dataclass
class Setting:
    """One seed of a task: its data, its trained teacher and its labels.

    `labelled` marks the training samples whose label the students may use;
    `y_distil` is `y_train` with the others `UNLABELLED`.
    """

    task: Task
    seed: int
    epochs: int
    x_train: object
    y_train: np.ndarray
    x_test: object
    y_test: np.ndarray
    labelled: np.ndarray
    y_distil: np.ndarray
    teacher: keras.Model


def prepare(task, seed, quick):
    """Loads the task's data and trains its teacher from `seed`."""
    import quickstart

    x_train, y_train, x_test, y_test, labelled = task.data(quick)
    teacher_inputs = task.teacher_inputs or (lambda x: x)
    keras.utils.set_random_seed(seed)
    teacher = task.teacher()
    fit(teacher, teacher_inputs(x_train), y_train, 1 if quick else task.teacher_epochs, task)
    if labelled == "transfer":
        labelled = quickstart.labelled_subset(y_train, 0.1, seed)
        y_distil = np.where(labelled, y_train, keras_distill.UNLABELLED)
    else:
        labelled, y_distil = np.ones(len(y_train), bool), y_train
    return Setting(task, seed, 1 if quick else task.epochs, x_train, y_train,
                   x_test, y_test, labelled, y_distil, teacher)


def teacher_accuracy(setting):
    inputs = setting.task.teacher_inputs or (lambda x: x)
    return accuracy(setting.teacher, inputs(setting.x_test), setting.y_test)


def student_accuracy(setting, loss=None, student_loss_weight=None):
    """The test accuracy of the task's student, trained from the setting's
    seed with `loss` and the labels, or on its labels alone (`loss=None`)."""
    task, epochs = setting.task, setting.epochs
    student_inputs = task.student_inputs or (lambda x: x)
    keras.utils.set_random_seed(setting.seed)
    student = task.student()
    if loss is None:
        alone = keras.tree.map_structure(
            lambda a: a[setting.labelled], student_inputs(setting.x_train)
        )
        # Fewer samples, more epochs: the same number of updates.
        more = max(1, round(epochs * len(setting.labelled) / setting.labelled.sum()))
        fit(student, alone, setting.y_train[setting.labelled], more, task)
    else:
        wrap = task.wrap_teacher or (lambda t: t)
        distiller = keras_distill.Distiller(
            wrap(setting.teacher), student, loss, student_loss_weight=student_loss_weight
        )
        fit(distiller, setting.x_train, setting.y_distil, epochs, task)
    return accuracy(student, student_inputs(setting.x_test), setting.y_test)


def run_task(task, seed, quick):
    """The test accuracy of the teacher and of each method's student."""
    setting = prepare(task, seed, quick)
    results = {"teacher": teacher_accuracy(setting)}
    for name, (_, make_loss, weight) in METHODS.items():
        loss = make_loss(setting.epochs) if make_loss else None
        results[name] = student_accuracy(setting, loss, weight)
    return results


def spread(values):
    """The values over seeds, their mean and standard deviation."""
    values = np.asarray(values, dtype=float)
    return {"values": values.tolist(), "mean": float(values.mean()),
            "std": float(values.std(ddof=1))}


def paired(values, base):
    """`spread(values)` and their gain over `base`, paired by seed: its mean,
    standard deviation and standard error, and whether the mean exceeds two
    standard errors."""
    gain = np.asarray(values, dtype=float) - np.asarray(base, dtype=float)
    error = float(gain.std(ddof=1) / np.sqrt(len(gain)))
    return {**spread(values), "gain_mean": float(gain.mean()),
            "gain_std": float(gain.std(ddof=1)), "gain_standard_error": error,
            "significant": bool(gain.mean() > 2 * error)}


def summarise(runs):
    """Means, spreads and paired gains over seeds, per model."""
    base = [run["labels_only"] for run in runs]
    methods = {"labels_only": spread(base)}
    for name in METHODS:
        if name != "labels_only":
            methods[name] = paired([run[name] for run in runs], base)
    best = max((n for n in METHODS if n != "labels_only"), key=lambda n: methods[n]["mean"])
    return {"teacher": spread([run["teacher"] for run in runs]), "methods": methods,
            "best": best}


def measure(tasks, seeds, quick):
    import speed

    start = time.perf_counter()
    report = {
        "backend": keras.backend.backend(),
        "versions": speed.versions(),
        "quick": quick,
        "seeds": list(seeds),
        "methods": {name: spec[0] for name, spec in METHODS.items()},
        "tasks": {},
    }
    for name in tasks:
        task = TASKS[name]
        task_start = time.perf_counter()
        runs = [run_task(task, seed, quick) for seed in seeds]
        report["tasks"][name] = {
            "description": task.description,
            "seconds": round(time.perf_counter() - task_start, 1),
            **summarise(runs),
        }
        print(f"{name}: {report['tasks'][name]['seconds']} s", file=sys.stderr)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


# -- The documentation page ----------------------------------------------------


def page(report):
    """The Markdown page of a results file: the table, the plot, the tally."""
    methods = [m for m in report["methods"] if m != "labels_only"]
    lines = [
        "# Does distillation win?",
        "",
        "<!-- Written by benchmarks/quality.py --render from "
        "docs/results/quality.json; do not edit. -->",
        "",
        f"Test accuracy over {len(report['seeds'])} seeds "
        f"({report['backend']}, Keras {report['versions']['keras']}): the mean "
        "± standard deviation, and below it the gain over the same student "
        "trained on labels only, paired by seed (mean ± standard error; "
        "**bold** where it exceeds two standard errors). The settings are "
        "the papers' defaults, the same on every task, not tuned. "
        "`benchmarks/quality.py` trains every model.",
        "",
        "| method | " + " | ".join(report["tasks"]) + " |",
        "|---|" + "---|" * len(report["tasks"]),
    ]

    def cells(name):
        row = []
        for task in report["tasks"].values():
            cell = task["teacher"] if name == "teacher" else task["methods"][name]
            text = f"{cell['mean']:.4f} ± {cell['std']:.4f}"
            if "gain_mean" in cell:
                gain = f"{cell['gain_mean']:+.4f} ± {cell['gain_standard_error']:.4f}"
                text += "<br>" + (f"**{gain}**" if cell["significant"] else gain)
            row.append(text)
        return row

    for name in ["teacher", "labels_only", *methods]:
        lines.append(f"| `{name}` | " + " | ".join(cells(name)) + " |")
    lines += ["", "![Gain over labels only, by method and task](quality.png)", "",
              "## Per task", "", "| task | what | best method | its gain | "
              "methods with a significant gain |", "|---|---|---|---|---|"]
    for name, task in report["tasks"].items():
        best = task["methods"][task["best"]]
        winners = sum(task["methods"][m]["significant"] for m in methods)
        lines.append(
            f"| `{name}` | {task['description']} | `{task['best']}` | "
            f"{best['gain_mean']:+.4f} ± {best['gain_standard_error']:.4f} | "
            f"{winners} of {len(methods)} |"
        )
    lines += ["", "## Why, per task", ""]
    for name, task in report["tasks"].items():
        lines += [f"**`{name}`.** {WHY[name]} {verdict(task, methods)}", ""]
    lines += ["## The methods", ""]
    lines += [f"- `{name}`: {text}" for name, text in report["methods"].items()]
    lines += ["", "## References", ""] + [f"- {r}" for r in REFERENCES]
    return "\n".join(lines) + "\n"

REFERENCES = [
    "Beyer et al., 2022. Knowledge distillation: A good teacher is patient "
    "and consistent. CVPR.",
    "Bucila, Caruana and Niculescu-Mizil, 2006. Model compression. KDD.",
    "Cho and Hariharan, 2019. On the efficacy of knowledge distillation. ICCV.",
    "Hinton, Vinyals and Dean, 2015. Distilling the knowledge in a neural "
    "network. arXiv:1503.02531.",
    "Mirzadeh et al., 2020. Improved knowledge distillation via teacher "
    "assistant. AAAI.",
    "Sun et al., 2024. Logit standardization in knowledge distillation. "
    "CVPR.",
    "Tang et al., 2020. Understanding and improving knowledge distillation. "
    "arXiv:2002.03532.",
    "Xue et al., 2023. The modality focusing hypothesis: towards understanding "
    "crossmodal knowledge distillation. ICLR.",
]


def verdict(task, methods):
    """What a task's results say: which methods win, tie or lose against
    the labels-only student, by more than two standard errors or not."""
    cells = task["methods"]
    won = [m for m in methods if cells[m]["significant"]]
    lost = [m for m in methods
            if -cells[m]["gain_mean"] > 2 * cells[m]["gain_standard_error"]]
    names = lambda group: ", ".join(f"`{m}`" for m in group)  # noqa: E731
    if won:
        verb = "beats" if len(won) == 1 else "beat"
        text = f"Here {names(won)} {verb} labels only by more than two standard errors"
    else:
        text = "Here no method beats labels only by more than two standard errors"
    if lost:
        verb = "loses" if len(lost) == 1 else "lose"
        text += f", and {names(lost)} {verb} to it by more than two"
    rest = len(methods) - len(won) - len(lost)
    if rest:
        verb = "is" if rest == 1 else "are"
        text += f"; {rest} of {len(methods)} {verb} within two standard errors of it"
    return text + "."


def plot(report, path):
    """Bars of each method's gain per task, with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in report["methods"] if m != "labels_only"]
    tasks = list(report["tasks"])
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(9, 4))
    for i, method in enumerate(methods):
        cells = [report["tasks"][t]["methods"][method] for t in tasks]
        axes.bar(
            np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width,
            [100 * c["gain_mean"] for c in cells], width,
            yerr=[100 * c["gain_standard_error"] for c in cells], capsize=2, label=method,
        )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(tasks)), tasks)
    axes.set_ylabel("accuracy gain over labels only (points)")
    axes.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report, output=None):
    """Writes a results dict as indented JSON to the file `output`, or to
    standard output when it is `None`."""
    text = json.dumps(report, indent=2) + "\n"
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="Write the results JSON here (else stdout).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per task.")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: tiny slices, 1 epoch, 2 seeds.")
    parser.add_argument("--render", metavar="RESULTS",
                        help="Write docs/quality.md and its plot from this results file.")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        with open(PAGE, "w") as f:
            f.write(page(report))
        plot(report, PLOT)
        return
    report = measure(args.tasks, range(2 if args.quick else args.seeds), args.quick)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
