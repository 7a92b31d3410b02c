"""The distil-then-quantize tutorial: its int8 copy, its sizes, its quick run."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

import quantize_student  # noqa: E402


def dtypes(model):
    return {v.path: keras.backend.standardize_dtype(v.dtype) for v in model.weights}


def test_weight_bytes_counts_each_variable_at_the_size_of_its_dtype():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert quantize_student.weight_bytes(model) == (4 * 3 + 3) * 4
    model.quantize("int8", filters="dense")
    # An int8 kernel, then a float32 scale per unit and the float32 bias.
    assert quantize_student.weight_bytes(model) == 4 * 3 + 3 * 4 + 3 * 4


def test_quantized_copy_leaves_the_float_student_unchanged(tmp_path):
    student = quantize_student.student_model()
    before = student.get_weights()
    copy, sizes = quantize_student.quantized_copy(student, str(tmp_path))

    assert copy is not student
    assert set(dtypes(student).values()) == {"float32"}
    assert all(layer.quantization_mode is None for layer in student.layers)
    after = student.get_weights()
    assert len(after) == len(before)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)

    int8 = dtypes(copy)
    assert int8["hidden/kernel"] == int8["logits/kernel"] == "int8", int8
    assert int8["hidden/bias"] == int8["hidden/kernel_scale"] == "float32", int8
    assert [layer.quantization_mode for layer in copy.layers] == [None, "int8", "int8"]
    assert sorted(os.listdir(tmp_path)) == ["student_float32.keras", "student_int8.keras"]
    assert sizes["float32"] == os.path.getsize(tmp_path / "student_float32.keras")
    # 4 bytes per weight against 1 (plus a scale per unit and the config).
    assert sizes["int8"] < sizes["float32"] / 3
    assert (quantize_student.weight_bytes(copy)
            < quantize_student.weight_bytes(student) / 3.9)


def test_int8_student_and_its_file_predict_like_the_float_student(tmp_path):
    student = quantize_student.student_model()
    copy, _ = quantize_student.quantized_copy(student, str(tmp_path))
    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype("float32")
    expected = student.predict(x, verbose=0)
    logits = copy.predict(x, verbose=0)
    error = np.abs(logits - expected).max()
    assert 0 < error < 0.05 * np.abs(expected).max(), error

    loaded = keras.saving.load_model(tmp_path / "student_int8.keras")
    assert dtypes(loaded) == dtypes(copy)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), logits, rtol=1e-5, atol=1e-5)


def test_save_leaves_out_the_optimizer_state(tmp_path):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256),
                              keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 64)), np.ones((4, 3)), verbose=0)  # builds Adam's state
    model.save(tmp_path / "with_optimizer.keras")
    size = quantize_student.save(model, str(tmp_path / "model.keras"))

    assert size == os.path.getsize(tmp_path / "model.keras")
    # Adam keeps two values per weight: the plain save is 2.6 times larger
    # here (the weights are 67 kB, the rest of the file 18 kB).
    assert os.path.getsize(tmp_path / "with_optimizer.keras") > 2 * size
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for old, new in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert model.optimizer is not None  # the model itself is still compiled


def test_run_refuses_a_report_folder_in_use_before_training(tmp_path):
    (tmp_path / "student_int8.keras").write_text("an earlier run")
    with pytest.raises(FileExistsError, match="student_int8.keras"):
        quantize_student.run(report_dir=str(tmp_path))
    assert (tmp_path / "student_int8.keras").read_text() == "an earlier run"


@pytest.mark.slow
def test_quick_mode_prints_its_table_and_writes_its_report(tmp_path):
    folder = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "quantize_student.py"), "--quick",
         "--report", str(folder)],
        capture_output=True, text=True, check=True,
    )
    out = result.stdout
    assert f"backend {keras.backend.backend()}" in out, out
    rows = {}
    for name in ("teacher", "student (float32)", "student (int8)"):
        line = next((l for l in out.splitlines() if l.startswith(name + " ")), None)
        assert line is not None, (name, out)
        # Each measure's mean and its spread, "-" over one seed.
        words = line[len(name):].split()
        assert len(words) == 12 and words[1:10:2] == ["-"] * 5, (name, out)
        accuracy, agree, weights_kb, file_kb, ms = words[0:10:2]
        rows[name] = dict(accuracy=float(accuracy), agree=float(agree),
                          params=int(words[10].replace(",", "")),
                          weights=float(weights_kb), file=float(file_kb), ms=float(ms))
    f32, i8, teacher = rows["student (float32)"], rows["student (int8)"], rows["teacher"]
    assert f32["agree"] == 1.0
    assert i8["agree"] >= 0.95, out
    assert abs(i8["accuracy"] - f32["accuracy"]) <= 0.03, out
    assert i8["weights"] < f32["weights"] / 3.9 and i8["file"] < f32["file"] / 3, out
    assert teacher["params"] > 4 * f32["params"], out
    assert min(r["ms"] for r in rows.values()) > 0
    ratios = re.search(r"int8 / float32 student: weights ([\d.]+) ± -, file ([\d.]+)", out)
    assert ratios and float(ratios[1]) < 0.26, out

    folder = folder / "seed_0"  # the report of each seed
    assert sorted(os.listdir(folder)) == [
        "models.png", "report.md", "student_float32.keras", "student_int8.keras",
        "teacher.keras",
    ]
    table = (folder / "report.md").read_text()
    assert all(f"| {name} |" in table for name in rows), table
    assert (os.path.getsize(folder / "student_int8.keras") / 1000
            == pytest.approx(i8["file"], abs=0.05))
