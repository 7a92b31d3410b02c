"""The black-box MiniLM tutorial: its pure parts, and its quick mode (slow)."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.teachers import Precomputed
from keras_distill.teachers import precompute

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)

import fine_foods_minilm  # noqa: E402


def test_word_ids_are_padded_and_truncated():
    vocab = fine_foods_minilm.vocabulary(["Great tea!<br />great", "tea"], 10)
    assert vocab == {"great": 2, "tea": 3, "!": 4}
    ids = fine_foods_minilm.encode(["great tea, bad!", "", "tea"], vocab, 3)
    np.testing.assert_array_equal(ids, [[2, 3, 1], [0, 0, 0], [3, 0, 0]])
    assert ids.dtype == np.int32


def test_folds_are_balanced_and_fixed():
    folds = fine_foods_minilm.fold_ids(103)
    assert sorted(np.bincount(folds)) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(folds, fine_foods_minilm.fold_ids(103))
    assert not np.array_equal(folds, np.arange(103) % 5)  # shuffled


def test_binary_logits_give_the_sigmoid_of_the_log_odds():
    log_odds = np.array([-3.0, 0.0, 1.5])
    logits = fine_foods_minilm.binary_logits(log_odds)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities[:, 1], 1 / (1 + np.exp(-log_odds)),
                               rtol=1e-6)


class _Encoder:
    """Stands in for MiniLM: a text's embedding is its length."""

    def __init__(self):
        self.encoded = []

    def encode(self, texts, batch_size, convert_to_numpy):
        assert convert_to_numpy and isinstance(texts, list)
        self.encoded += texts
        return np.array([[float(len(t))] for t in texts])


class _Head:
    def __init__(self, offset):
        self.offset = offset

    def decision_function(self, embeddings):
        return embeddings[:, 0] + self.offset


def test_embeddings_are_computed_once_per_text():
    encoder = _Encoder()
    embed = fine_foods_minilm.cached_embeddings(encoder)
    np.testing.assert_array_equal(embed(["ab", "c", "ab"]), [[2], [1], [2]])
    np.testing.assert_array_equal(embed(["c", "def"]), [[1], [3]])
    assert encoder.encoded == ["ab", "c", "def"]


def test_teacher_function_routes_each_text_to_its_head():
    heads = [_Head(0.0), _Head(100.0), _Head(1000.0)]
    embed = fine_foods_minilm.cached_embeddings(_Encoder())
    teacher = fine_foods_minilm.teacher_function(embed, heads)
    texts = np.array(["a", "bb", "ccc", "dddd", "eeeee"], dtype=object)
    inputs = {"text": texts, "head": np.array([0, 1, 2, 1, 0])}
    outputs = precompute(teacher, inputs, batch_size=2)
    np.testing.assert_allclose(
        outputs["logits"][:, 1] * 2, [1, 102, 1003, 104, 5]
    )
    np.testing.assert_allclose(outputs["logits"][:, 0], -outputs["logits"][:, 1])


def test_cross_fitted_heads_are_fitted_without_their_fold():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    embeddings = rng.normal(size=(200, 4)) + labels[:, None]
    folds = fine_foods_minilm.fold_ids(200)
    heads = fine_foods_minilm.fit_heads(embeddings, labels, folds)
    assert len(heads) == fine_foods_minilm.FOLDS + 1
    c = heads[-1].C
    for k in range(fine_foods_minilm.FOLDS):
        outside = folds != k
        expected = LogisticRegression(C=c, max_iter=2000).fit(
            embeddings[outside], labels[outside]
        )
        np.testing.assert_allclose(heads[k].coef_, expected.coef_, rtol=1e-6)
        assert not np.allclose(heads[k].coef_, heads[-1].coef_)


def test_student_distils_from_precomputed_logits():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, (64, 8)).astype("int32")
    y = (x[:, 0] > 25).astype("int32")
    logits = fine_foods_minilm.binary_logits(np.where(y == 1, 3.0, -3.0))
    student = fine_foods_minilm.student_model(50, 8, width=8)
    distiller = keras_distill.Distiller(Precomputed(), student, KD(temperature=2.0))
    distiller.compile(
        keras.optimizers.Adam(0.01), fine_foods_minilm.SCCE
    )
    history = distiller.fit(
        {"inputs": x, "logits": logits}, y, epochs=3, batch_size=16, verbose=0
    ).history
    assert history["kd"][-1] < history["kd"][0]
    assert student.predict(x, verbose=0).shape == (64, 2)


@pytest.mark.slow
def test_quick_mode_prints_its_table_and_caches_the_logits(tmp_path):
    cache = tmp_path / "logits"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "fine_foods_minilm.py"),
         "--quick", "--cache", str(cache)],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        # Accuracy and inference seconds, each with its spread "-" (one
        # seed), then params and training seconds.
        match = re.match(r"(.+?)\s+([01]\.\d{4})\s+-\s+[\d.]+\s+-"
                         r"\s+(\d+)\s+[\d.]+$", line)
        if match:
            rows[match.group(1)] = (float(match.group(2)), int(match.group(3)))
    assert set(rows) == {
        "teacher: MiniLM-L6 + logistic head", "student, labels only",
        "student + KD",
    }, result.stdout
    assert rows["teacher: MiniLM-L6 + logistic head"][1] > 22_000_000
    assert rows["student + KD"][1] < 1_000_000
    train_logits = np.load(cache / "train" / "logits.npy")
    assert train_logits.shape == (64, 2) and np.isfinite(train_logits).all()
    assert np.load(cache / "test" / "logits.npy").shape == (64, 2)
