"""The documentation's code runs: the getting-started example, as written."""

import os
import re

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs")


def python_blocks(page):
    with open(os.path.join(DOCS, page)) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def test_getting_started_example_runs_and_saves_the_student(tmp_path, monkeypatch):
    (code,) = python_blocks("getting-started.md")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "getting-started.md", "exec"), namespace)
    assert os.path.exists(tmp_path / "student.keras")
    accuracy = namespace["distiller"].evaluate(
        namespace["x_test"], namespace["y_test"], verbose=0, return_dict=True
    )["accuracy"]
    assert accuracy > 0.8  # a tenth of the labels and the teacher


def test_the_keras_tuner_search_runs_and_returns_a_trained_student(tmp_path, monkeypatch):
    (code,) = python_blocks("choosing-settings.md")
    # Two short trials: the search as written, smaller.
    for full, short in [("max_trials=10", "max_trials=2"),
                        ("epochs=30, validation_data", "epochs=2, validation_data")]:
        assert full in code
        code = code.replace(full, short)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "choosing-settings.md", "exec"), namespace)
    best = namespace["tuner"].get_best_hyperparameters()[0].values
    assert set(best) == {"temperature", "student_loss_weight"}
    student, teacher = namespace["student"], namespace["teacher"]
    assert student.name == "student" and student is not teacher
    # The best trial's student, with its trained weights: its validation
    # accuracy is the one the tuner recorded.
    recorded = namespace["tuner"].oracle.get_best_trials()[0].score
    predicted = student.predict(namespace["x_val"], verbose=0).argmax(-1)
    assert abs((predicted == namespace["y_val"]).mean() - recorded) < 1e-6


@pytest.mark.parametrize("page", ["index.md", "concepts.md", "migrating.md", "resuming.md",
                                  "choosing-settings.md"])
def test_pages_name_only_existing_api(page):
    """Every `keras_distill.x.y` a page names exists."""
    import keras_distill

    with open(os.path.join(DOCS, page)) as f:
        names = set(re.findall(r"keras_distill(?:\.\w+)+", f.read()))
    for name in names:
        obj = keras_distill
        for part in name.split(".")[1:]:
            assert hasattr(obj, part), name
            obj = getattr(obj, part)
