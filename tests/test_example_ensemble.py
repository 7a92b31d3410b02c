"""The ensemble tutorial and the precomputed-teacher benchmark run end to end."""

import json
import os
import re
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

import fashion_mnist_ensemble  # noqa: E402


def test_best_teacher_is_chosen_on_validation_accuracy():
    rows = [
        {"model": "mlp", "accuracy": 0.99, "validation": 0.80},
        {"model": "cnn_deep", "accuracy": 0.10, "validation": 0.90},
        {"model": "cnn_wide", "accuracy": 0.50, "validation": 0.90},
        {"model": "ensemble (mean_logits)", "accuracy": 1.0, "validation": 1.0},
    ]
    names = ["mlp", "cnn_deep", "cnn_wide"]
    # Test accuracy plays no part, and nor do rows outside `names`; on a
    # tie the first teacher wins.
    assert fashion_mnist_ensemble.best(rows, names) == "cnn_deep"
    assert fashion_mnist_ensemble.best(rows, ["mlp", "cnn_wide"]) == "cnn_wide"


def test_training_images_may_not_reach_the_validation_split():
    with pytest.raises(ValueError, match="validation split"):
        fashion_mnist_ensemble.load(train_size=50001)
    with pytest.raises(ValueError, match="validation split"):
        fashion_mnist_ensemble.load(train_size=None)


def test_teachers_have_distinct_names_and_ten_logits():
    models = [factory() for factory in fashion_mnist_ensemble.TEACHERS]
    assert len({m.name for m in models}) == len(models)
    student = fashion_mnist_ensemble.student_model()
    for model in models:
        assert model.outputs[0].shape[-1] == 10
        assert model.count_params() > 10 * student.count_params()


@pytest.mark.slow
def test_ensemble_tutorial_quick_mode_prints_its_table():
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "fashion_mnist_ensemble.py"),
         "--quick"],
        capture_output=True, text=True, check=True,
    )
    out = result.stdout
    assert f"backend {keras.backend.backend()}" in out, out
    assert re.search(r"best teacher on the validation split is (mlp|cnn_deep|cnn_wide)\b", out), out
    for row in ("mlp", "cnn_deep", "cnn_wide", "ensemble (mean_logits)",
                "ensemble (mean_probabilities)", "student, labels only",
                "student + KD (best teacher)",
                "student + KD (ensemble, mean_logits)",
                "student + KD (ensemble, mean_probabilities)"):
        line = next((l for l in out.splitlines() if l.startswith(row + " ")), None)
        assert line is not None, (row, out)
        accuracy, _, validation, _, params, _ = line[len(row):].split()
        assert 0.0 <= float(accuracy) <= 1.0 and 0.0 <= float(validation) <= 1.0
        assert int(params) > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mnist_mlp", "fashion_cnn"])
def test_precomputed_teacher_benchmark_prints_its_ratios(case):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "precomputed_teacher.py"),
         "--case", case, "--steps", "2", "--repeats", "1"],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(result.stdout)
    assert report["backend"] == keras.backend.backend()
    assert report["keras"] == keras.__version__
    assert report["case"] == case
    variants = {"student_alone", "live_teacher", "precomputed"}
    assert set(report["epoch_s"]) == set(report["step_ms"]) == variants
    assert all(v > 0 for v in report["epoch_s"].values())
    assert set(report["ratios"]) == {
        "precomputed_over_live", "precomputed_over_student_alone",
        "live_over_student_alone",
    }
    assert all(v > 0 for v in report["ratios"].values())
    assert report["precompute_s"]["first_call"] > 0
    assert report["params"]["teacher"] > report["params"]["student"] > 0
