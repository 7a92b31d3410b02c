"""The examples run end to end: quick modes here, the real runs marked slow."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from tests.conftest import classification_data
from tests.conftest import mlp

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)

import fine_foods_bert  # noqa: E402
import migrate_from_keras  # noqa: E402
import mnist_hinton  # noqa: E402
import quickstart  # noqa: E402
import results  # noqa: E402


def test_quickstart_trains_all_three_models():
    row = quickstart.run_seed(0, quickstart.load_data(), steps=100)
    assert row["teacher_params"] > 10 * row["student_params"]
    assert row["labelled"] == 126 and row["unlabelled"] == 1131
    for key in ("teacher", "labels_only", "distilled"):
        assert 0.3 < row[key] <= 1.0, row


def test_quickstart_labels_a_tenth_of_each_class():
    y = np.repeat(np.arange(10), 50)
    keep = quickstart.labelled_subset(y, 0.1, seed=0)
    assert all(keep[y == label].sum() == 5 for label in range(10))


def test_quickstart_summary_pairs_the_seeds():
    rows = [{"teacher": 0.9, "labels_only": a, "distilled": b}
            for a, b in [(0.80, 0.90), (0.70, 0.82), (0.90, 0.95)]]
    summary = quickstart.summarise(rows)
    gains = np.array([0.10, 0.12, 0.05])
    assert np.isclose(summary["gain"]["mean"], gains.mean())
    assert np.isclose(summary["gain"]["standard_error"], gains.std(ddof=1) / np.sqrt(3))
    assert np.isclose(summary["labels_only"]["std"], np.std([0.8, 0.7, 0.9], ddof=1))


def test_quickstart_script_prints_its_table(tmp_path):
    results = tmp_path / "quickstart.json"
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "quickstart.py"), "--quick",
         "--results", str(results)],
        capture_output=True, text=True, check=True,
    )
    assert "student (distilled, + unlabelled)" in result.stdout, result.stdout
    assert "smoke run" in result.stdout
    assert json.loads(results.read_text())["summary"]["seeds"] == 2


def test_jitter_shifts_each_image_within_two_pixels():
    rng = np.random.default_rng(0)
    images = np.zeros((50, 28, 28), np.uint8)
    images[:, 14, 14] = 255
    shifted = mnist_hinton.jitter(images, rng)
    positions = np.argwhere(shifted == 255)
    assert len(positions) == 50  # nothing cropped away
    assert np.abs(positions[:, 1:] - 14).max() <= 2
    assert len({tuple(p) for p in positions[:, 1:]}) > 5


@pytest.mark.slow
def test_mnist_distilled_student_makes_fewer_errors_than_scratch(tmp_path):
    """Hinton et al. 2015, section 3, at T=4, on a short schedule (10,000
    images, teacher 15 epochs, students 10), run as a script that also
    writes its report. Seed 0 measured 41-62 fewer errors distilled than
    from scratch on the three backends."""
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "mnist_hinton.py"),
         "--train-size", "10000", "--teacher-epochs", "15", "--epochs", "10",
         "--temperatures", "4", "--seeds", "0", "--report", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    rows = table_rows(result.stdout)
    assert list(rows) == ["teacher 2x1200", "student 2x800, labels",
                          "student, KD T=4"], result.stdout
    # Errors (a whole number: one seed), its spread ("-"), params, seconds.
    teacher, scratch, distilled = rows.values()
    for errors, spread, _, _ in rows.values():
        assert errors == int(errors) and spread is None, result.stdout
    assert teacher[0] < scratch[0], result.stdout
    assert distilled[0] < scratch[0], result.stdout
    assert distilled[2] == scratch[2] < teacher[2]
    report = tmp_path / "seed_0"
    assert {"report.md", "models.png", "training.png"} <= set(os.listdir(report))


@pytest.mark.slow
def test_fit_with_jit_compile():
    """XLA on TensorFlow and JAX; torch.compile on PyTorch."""
    x, y = classification_data(128)
    distiller = keras_distill.Distiller(mlp(32), mlp(4), KD(temperature=2.0))
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert history["kd"][-1] < history["kd"][0]


def test_migration_reference_kd_is_hintons_formula():
    """The tutorial's NumPy KD: T^2 KL of the softened distributions, and 0
    for identical logits."""
    teacher = np.array([[2.0, 0.0, -1.0]])
    student = np.array([[0.0, 1.0, 0.0]])
    p = np.exp(teacher / 2) / np.exp(teacher / 2).sum()
    q = np.exp(student / 2) / np.exp(student / 2).sum()
    expected = 4.0 * np.sum(p * np.log(p / q))
    assert migrate_from_keras.hinton_kd(teacher, student, 2.0) == pytest.approx(expected)
    assert migrate_from_keras.hinton_kd(teacher, teacher, 3.0) == pytest.approx(0.0)


def test_fine_foods_encoding_and_distilbert_initialisation():
    vocab = fine_foods_bert.vocabulary(["Great tea!<br />great", "tea"], 10)
    assert vocab == {"great": 3, "tea": 4, "!": 5}
    x = fine_foods_bert.encode(["great tea, bad!", ""], vocab, 4)
    np.testing.assert_array_equal(x["token_ids"], [[2, 3, 4, 1], [2, 0, 0, 0]])
    np.testing.assert_array_equal(x["padding_mask"], x["token_ids"] != 0)

    teacher = fine_foods_bert.bert(4, 30, 8, "teacher")
    student = fine_foods_bert.bert(2, 30, 8, "student")
    fine_foods_bert.initialise_from_teacher(student, teacher)
    for s_index, t_index in ((0, 1), (1, 3)):
        s_layer = student.backbone.get_layer(f"transformer_layer_{s_index}")
        t_layer = teacher.backbone.get_layer(f"transformer_layer_{t_index}")
        for a, b in zip(s_layer.get_weights(), t_layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        student.backbone.get_layer("token_embedding").get_weights()[0],
        teacher.backbone.get_layer("token_embedding").get_weights()[0],
    )


def table_rows(stdout):
    """`{model: [numbers...]}` of the results table a tutorial printed: each
    row's measures (mean and spread), then its parameters and seconds. A
    spread printed as "-" (one seed: none measured) reads as `None`; the
    table ends at the first line without a number in each column."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    # One number per header word but "model" and "±" ("± std" is one).
    columns = len([w for w in lines[start].split()[1:] if w != "±"])
    rows = {}
    for line in lines[start + 1:]:
        words = line.split()
        if len(words) <= columns:
            break
        try:
            numbers = [None if w == "-" else float(w) for w in words[-columns:]]
        except ValueError:
            break
        rows[" ".join(words[:-columns])] = numbers
    return rows


def test_print_table_gives_the_sample_std_over_seeds_and_none_for_one(capsys):
    def seed(accuracy, seconds):
        return [{"model": "student, labels only", "accuracy": accuracy,
                 "params": 120, "seconds": seconds}]

    results.print_table("Test", [seed(0.8, 1.0), seed(0.7, 3.0), seed(0.9, None)])
    out = capsys.readouterr().out
    assert "3 seed(s)" in out.splitlines()[0], out
    # ddof=1: the std of 0.7, 0.8, 0.9 is 0.1 (ddof=0 would give 0.0816).
    assert table_rows(out) == {"student, labels only": [0.8, 0.1, 120, None]}, out
    results.print_table("Test", [seed(0.8, 2.0)])
    out = capsys.readouterr().out
    assert table_rows(out) == {"student, labels only": [0.8, None, 120, 2.0]}, out
    assert results.mean_std_text([0.1, 0.3], 2, sign=True) == "+0.20 ± 0.14"
    assert results.mean_std_text([0.25], 3) == "0.250 ± -"


def check_accuracies(rows, measures=1):
    """Each mean measure is a fraction, its spread "-" (`None`) over one
    seed, and the parameter counts whole numbers."""
    for name, numbers in rows.items():
        assert len(numbers) == 2 * measures + 2, (name, numbers)
        for mean, spread in zip(numbers[0:-2:2], numbers[1:-2:2]):
            assert 0.0 <= mean <= 1.0 and spread is None, (name, numbers)
        assert numbers[-2] == int(numbers[-2]) > 0, (name, numbers)


def students_share_an_architecture_smaller_than(rows, teacher, ratio=1.0):
    params = {name: numbers[-2] for name, numbers in rows.items()}
    students = {p for name, p in params.items() if name.startswith("student")}
    assert len(students) == 1, params
    assert params[teacher] > ratio * students.pop(), params


def check_attention(rows):
    check_accuracies(rows)
    students_share_an_architecture_smaller_than(rows, "teacher", ratio=2.5)


def check_embeddings(rows):
    check_accuracies(rows, measures=2)
    # The docstring's "6.8k parameters, 11 times fewer".
    students_share_an_architecture_smaller_than(rows, "teacher", ratio=11.0)
    assert rows["student, labels only"][-2] < 7000


def check_bert(rows):
    check_accuracies(rows)
    students_share_an_architecture_smaller_than(rows, "teacher (4 layers)")


def check_self(rows):
    check_accuracies(rows)
    # One architecture throughout; the ensemble holds three of them.
    single = {n: r[-2] for n, r in rows.items() if "ensemble" not in n}
    assert len(set(single.values())) == 1, single
    ensemble = rows["born-again ensemble of generations 0-2"][-2]
    assert ensemble == 3 * next(iter(single.values()))


def check_patient(rows):
    # Errors over one seed (a whole number, no spread), params, seconds.
    for name, (errors, spread, params, _) in rows.items():
        assert 0 <= errors <= 10_000 and errors == int(errors), (name, errors)
        assert spread is None and params > 0, (name, spread, params)


TUTORIALS = {
    "fashion_mnist_attention.py": (
        ["teacher", "student, labels only", "student + KD",
         "student + KD + AT + FitNet"], check_attention),
    "fashion_mnist_embeddings.py": (
        ["teacher", "student, labels only", "student + RKD", "student + SP",
         "student + PKT", "student + CC", "student + CRD"], check_embeddings),
    "fine_foods_bert.py": (
        ["teacher (4 layers)", "student, labels only",
         "student + DistilBERT losses", "student + TinyBERT losses"], check_bert),
    "fashion_mnist_self.py": (
        ["labels only (generation 0)", "mutual learning, peer_1 of 2",
         "mutual learning, peer_2 of 2", "student of its moving average",
         "the moving average itself",
         "student of its snapshots (every 2 epochs)", "born-again generation_1",
         "born-again generation_2", "born-again ensemble of generations 0-2"],
        check_self),
    "mnist_patient.py": (["teacher CNN", "student, function matching"], check_patient),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TUTORIALS))
def test_tutorial_quick_mode_prints_every_model_with_valid_measures(script):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), "--quick"],
        capture_output=True, text=True, check=True,
    )
    rows = table_rows(result.stdout)
    names, check = TUTORIALS[script]
    assert list(rows) == names, result.stdout
    check(rows)


@pytest.mark.slow
def test_migration_tutorial_shows_keras_distill_computing_hintons_kd():
    # The tutorial's claim: keras_distill's LogitsDistillation is Hinton's
    # KD, keras.distillation's default is not.
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "migrate_from_keras.py"), "--quick"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Hinton KD" in line)
    # T, then the mean and spread ("-": one seed) of each library's loss.
    losses = [line.split() for line in lines[start + 1:]]
    assert [float(row[0]) for row in losses] == [1.0, 2.0, 4.0], result.stdout
    for row in losses:
        assert len(row) == 7 and row[2::2] == ["-"] * 3, result.stdout
        hinton, ours, keras_default = (float(v) for v in row[1::2])
        assert ours == pytest.approx(hinton, rel=1e-3, abs=1e-4)
        assert abs(keras_default - hinton) > 0.1 * hinton
    errors = table_rows(result.stdout)
    assert set(errors) == {"teacher", "scratch_student", "keras_distillation",
                           "keras_distill"}, result.stdout
    for mean, spread in errors.values():
        assert 0 <= mean <= 10_000 and mean == int(mean) and spread is None
