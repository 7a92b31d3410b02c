"""Tests of `keras_distill.report`: the measures, the files, bad input."""

import builtins
import os

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.reporting import table
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trained():
    x, y = classification_data(96)
    teacher, student = mlp(32, name="teacher"), mlp(4, name="student")
    teacher.compile("adam", SCCE)
    teacher.fit(x, y, epochs=2, verbose=0)
    distiller = keras_distill.Distiller(teacher, student, KD(temperature=2.0))
    distiller.compile(keras.optimizers.Adam(0.01), SCCE)
    history = distiller.fit(x, y, epochs=3, validation_split=0.25, verbose=0)
    return x, y, teacher, student, history


def test_rows_hold_accuracy_parameters_and_latency():
    x, y, teacher, student, _ = trained()
    rows = keras_distill.report(
        {"teacher": teacher, "student": student}, x, y, batch_size=32, repeats=3
    )
    assert [r["model"] for r in rows] == ["teacher", "student"]
    for row, model in zip(rows, (teacher, student)):
        expected = np.mean(to_np(model(x)).argmax(-1) == y)
        assert row["accuracy"] == pytest.approx(expected)
        assert row["params"] == model.count_params()
        assert row["latency_ms"] > 0
    assert rows[0]["params"] > rows[1]["params"]
    lines = table(rows).splitlines()
    assert lines[2].startswith(f"| teacher | {rows[0]['accuracy']:.4f} |")


def test_writes_the_table_and_both_plots_and_refuses_to_overwrite(tmp_path):
    x, y, teacher, student, history = trained()
    path = os.path.join(tmp_path, "report")
    rows = keras_distill.report(
        {"teacher": teacher, "student": student}, x, y,
        histories={"student": history}, path=path, repeats=2,
    )
    with open(os.path.join(path, "report.md")) as f:
        assert f.read() == table(rows)
    for name in ("models.png", "training.png"):
        with open(os.path.join(path, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="report.md"):
        keras_distill.report({"teacher": teacher}, x, y, path=path)


def test_without_matplotlib_the_measures_still_come_back(tmp_path, monkeypatch):
    x, y, teacher, _, _ = trained()
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert keras_distill.report({"teacher": teacher}, x, y, repeats=1)
    with pytest.raises(ImportError, match="keras-distill\\[report\\]"):
        keras_distill.report({"teacher": teacher}, x, y, path=str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")


def test_bad_input():
    x, y = classification_data(8)
    model = mlp(4)
    with pytest.raises(TypeError, match="dict"):
        keras_distill.report([model], x, y)
    with pytest.raises(ValueError, match="8 samples and y 7"):
        keras_distill.report({"m": model}, x, y[:7])
    embedder = keras.Sequential([keras.Input((8,)), keras.layers.Reshape((2, 4))])
    with pytest.raises(ValueError, match="classifiers"):
        keras_distill.report({"embedder": embedder}, x, y)
