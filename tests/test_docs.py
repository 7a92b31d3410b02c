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
    assert accuracy > 0.8  # digits: a trained 16-unit MLP reaches about 0.95


@pytest.mark.parametrize("page", ["index.md", "concepts.md", "migrating.md", "resuming.md"])
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
