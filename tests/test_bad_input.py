"""Inputs that are well formed but wrong: refused, or warned about, before
anything trains, with the fix in the message."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import CRD
from keras_distill.losses import DIST
from keras_distill.losses import DKD
from keras_distill.losses import KD
from keras_distill.teachers import Precomputed
from keras_distill.teachers import precompute
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def softmax_mlp(width, name=None):
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(width, activation="relu"),
         keras.layers.Dense(3, activation="softmax")],
        name=name,
    )


def compiled(teacher, student, loss):
    distiller = keras_distill.Distiller(teacher, student, loss)
    distiller.compile(loss=SCCE)
    return distiller


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_probabilities_read_as_logits_are_warned_about(role):
    x, y = classification_data(32)
    models = {"teacher": mlp(16), "student": mlp(4)}
    models[role] = softmax_mlp(8)
    distiller = compiled(models["teacher"], models["student"], KD())
    with pytest.warns(UserWarning, match=f"{role}'s outputs look like probabilities.*{role}_from_logits=False"):
        distiller.evaluate(x, y, verbose=0)
    with warnings.catch_warnings():  # said once, not on every call
        warnings.simplefilter("error", UserWarning)
        distiller.evaluate(x, y, verbose=0)


def test_dist_on_two_classes_is_warned_about_once():
    """The inter-class correlation of two scores is always +1 or -1."""
    x, y = classification_data(32, num_classes=2)
    with pytest.warns(UserWarning, match="DIST: the models score 2 classes.*prefer KD"):
        distiller = compiled(mlp(16, 2), mlp(4, 2), DIST())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        distiller.fit(x, y, verbose=0)
        compiled(mlp(16), mlp(4), DIST())  # 3 classes
        compiled(mlp(16, 2), mlp(4, 2), DIST(beta=0.0))  # no inter-class term
    for a, b in np.random.default_rng(0).normal(size=(5, 2, 2)):  # the claim
        assert abs(abs(np.corrcoef(a, b)[0, 1]) - 1.0) < 1e-9


def test_the_same_check_for_keras_logits_distillation():
    x, y = classification_data(32)
    distiller = compiled(softmax_mlp(8), mlp(4), keras_distill.LogitsDistillation())
    with pytest.warns(UserWarning, match="teacher's outputs look like probabilities"):
        distiller.train_on_batch(x, y)


def test_logits_read_as_probabilities_are_refused_before_any_step():
    x, y = classification_data(32)
    distiller = compiled(mlp(16), mlp(4), KD(teacher_from_logits=False))
    before = distiller.student.get_weights()
    with pytest.raises(ValueError, match="teacher_from_logits=False.*are not.*teacher_from_logits=True"):
        distiller.fit(x, y, verbose=0)
    for a, b in zip(before, distiller.student.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Probabilities, as promised: no word.
    distiller = compiled(softmax_mlp(16), mlp(4), KD(teacher_from_logits=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        distiller.evaluate(x, y, verbose=0)


def test_labels_outside_the_classes_are_refused_for_losses_that_read_them():
    x, y = classification_data(32)
    distiller = compiled(mlp(16), mlp(4), DKD())
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*range over \[0, 7\]"):
        distiller.fit(x, np.where(y == 2, 7, y), verbose=0)
    # -1 is keras_distill.UNLABELLED; -2 is no label at all.
    with pytest.raises(ValueError, match=r"range over \[-2, "):
        distiller.evaluate(x, y - 2, verbose=0)


@pytest.mark.parametrize("make", [
    lambda: DKD(alpha=-1.0), lambda: DKD(beta=-0.5),
    lambda: DIST(beta=-1.0), lambda: DIST(gamma=-2.0),
])
def test_negative_term_weights_are_refused(make):
    with pytest.raises(ValueError, match="must be >= 0"):
        make()


def test_a_crd_queue_smaller_than_the_batch_is_refused():
    x, y = classification_data(32)
    loss = CRD("hidden", "hidden", embedding_dim=4, queue_size=8)
    distiller = keras_distill.Distiller(mlp(16), mlp(4), loss)
    distiller.compile(loss=SCCE)
    with pytest.raises(ValueError, match="queue_size of at least the batch size"):
        distiller.fit(x, y, batch_size=16, verbose=0)


def test_precompute_refuses_more_top_classes_than_there_are():
    x, _ = classification_data(16)
    with pytest.raises(ValueError, match="scores only 3 classes"):
        precompute(mlp(16), x, top_k=5)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        precompute(mlp(16), x, top_k=0)


def test_precomputed_num_classes_must_cover_the_stored_classes():
    x, y = classification_data(16)
    outputs = precompute(mlp(16), x, top_k=2)
    for teacher, match in [
        (Precomputed(num_classes=2), "num_classes=2.*name class 2.*at least 3"),
        (Precomputed(), r"Precomputed\(num_classes=...\)"),
    ]:
        distiller = keras_distill.Distiller(teacher, mlp(4), KD())
        distiller.compile(loss=SCCE)
        with pytest.raises(ValueError, match=match):
            distiller.fit({"inputs": x, **outputs}, y, verbose=0)


def test_a_precomputed_distiller_predicts_from_plain_inputs():
    x, y = classification_data(16)
    student = mlp(4)
    distiller = keras_distill.Distiller(Precomputed(), student, KD())
    distiller.compile(loss=SCCE)
    distiller.fit({"inputs": x, **precompute(mlp(16), x)}, y, verbose=0)
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), to_np(student(x)), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="reads its outputs from the data, a dict"):
        distiller.teacher(x)


def test_report_measures_a_distillers_student():
    x, y = classification_data(64)
    teacher, student = mlp(16), mlp(4)
    distiller = keras_distill.Distiller(teacher, student, KD())
    (row,) = keras_distill.report({"distilled": distiller}, x, y, repeats=1)
    assert row["params"] == student.count_params() < distiller.count_params()
    expected = np.mean(np.argmax(to_np(student(x)), -1) == y)
    assert row["accuracy"] == pytest.approx(expected)
    peers = keras_distill.MutualLearning([mlp(4, name="a"), mlp(4, name="b")])
    with pytest.raises(TypeError, match="pass each of them"):
        keras_distill.report({"mutual": peers}, x, y, repeats=1)


def test_loading_without_importing_keras_distill_names_the_package(tmp_path):
    path = os.fspath(tmp_path / "distiller.keras")
    compiled(mlp(16), mlp(4), KD()).save(path)
    script = textwrap.dedent(f"""
        import keras
        try:
            keras.saving.load_model({path!r})
        except TypeError as error:
            print(error)
    """)
    message = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
    ).stdout
    assert "Could not locate class 'Distiller'" in message
    assert "'module': 'keras_distill.distiller'" in message  # what to import
    loaded = keras.saving.load_model(path)  # here, keras_distill is imported
    assert isinstance(loaded, keras_distill.Distiller)


def test_precomputed_classes_out_of_range_make_nan_on_every_backend():
    teacher = Precomputed(num_classes=3)
    logits = to_np(teacher({
        "top_logits": np.array([[2.0, 1.0], [2.0, 1.0]], "float32"),
        "top_classes": np.array([[0, 1], [0, 3]], "int32"),
    }))
    np.testing.assert_array_equal(logits[0], [2.0, 1.0, -np.inf])
    assert np.all(np.isnan(logits[1]))
    # From a dataset, which check_data does not read: training stops.
    x, y = classification_data(16)
    outputs = precompute(mlp(16), x, top_k=2)
    outputs["top_classes"][3, 1] = 5
    distiller = keras_distill.Distiller(Precomputed(num_classes=3), mlp(4), KD())
    distiller.compile(loss=SCCE)

    def batches():
        while True:
            yield {"inputs": x, **outputs}, y

    with pytest.raises(ValueError, match="were NaN or infinite during the first batch"):
        distiller.fit(batches(), steps_per_epoch=1, shuffle=False, verbose=0)
