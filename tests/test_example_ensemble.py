"""The ensemble tutorial: its choices, and its quick mode end to end."""

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
    scores = {"mlp": 0.80, "cnn_deep": 0.90, "cnn_wide": 0.90,
              "ensemble (mean_logits)": 1.0}
    names = ["mlp", "cnn_deep", "cnn_wide"]
    # Scores outside `names` play no part; on a tie the first teacher wins.
    assert fashion_mnist_ensemble.best(scores, names) == "cnn_deep"
    assert fashion_mnist_ensemble.best(scores, ["mlp", "cnn_wide"]) == "cnn_wide"


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
def test_ensemble_tutorial_quick_mode_prints_its_table_and_report(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "fashion_mnist_ensemble.py"),
         "--quick", "--report", str(tmp_path)],
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
    with open(tmp_path / "seed_0" / "report.md") as f:
        table = f.read()
    assert "| ensemble (mean_logits) |" in table and "| student, labels only |" in table
    assert {"models.png", "training.png"} <= set(os.listdir(tmp_path / "seed_0"))
