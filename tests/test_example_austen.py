"""The Jane Austen language-model tutorial: its data, its padding, its run."""

import bz2
import lzma
import os
import re
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill._keras_internals import get_keras_mask
from keras_distill.losses import KD
from keras_distill.teachers import Precomputed
from tests.reference import logits as random_logits
from tests.reference import np_log_softmax
from tests.reference import ref_kd

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
sys.path.insert(0, EXAMPLES)

import austen_lm  # noqa: E402
import datasets  # noqa: E402


def test_loader_gives_the_six_novels_in_publication_order():
    novels = datasets.load_jane_austen()
    assert list(novels) == [
        "Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma",
        "Northanger Abbey", "Persuasion",
    ]
    for title, lines in novels.items():
        words = sum(len(line.split()) for line in lines)
        assert 70_000 < words < 170_000, (title, words)
        assert all(isinstance(line, str) for line in lines)
        assert "" in lines  # the blank lines between paragraphs are kept
    emma = " ".join(novels["Emma"][:30])
    assert "Emma Woodhouse, handsome, clever, and rich" in emma
    pride = " ".join(novels["Pride & Prejudice"][:40])
    assert "It is a truth universally acknowledged" in pride


@pytest.mark.parametrize("kind", [b"Z", b"2", b"1", b"0"])
def test_r_lazyload_chunks_are_decompressed_by_their_type_byte(kind):
    body = b"R serialization " * 20
    compressed = {
        b"Z": lzma.compress(body, format=lzma.FORMAT_RAW,
                            filters=[{"id": lzma.FILTER_LZMA2}]),
        b"2": bz2.compress(body),
        b"1": zlib.compress(body),
        b"0": body,
    }[kind]
    length = len(body).to_bytes(4, "big")
    assert datasets._r_decompress("x", length + kind + compressed, True) == body
    # `compress = TRUE` databases (janeaustenr) have no type byte.
    assert datasets._r_decompress("x", length + zlib.compress(body), False) == body
    with pytest.raises(ValueError, match="unsupported R compression"):
        datasets._r_decompress("x", length + b"?" + body, True)


def test_paragraphs_are_packed_whole_and_padded():
    lines = ["", "It is a truth", "universally acknowledged.", "", "", "Yes!"]
    assert austen_lm.paragraphs(lines) == [
        "It is a truth universally acknowledged.", "Yes!"
    ]
    rows = austen_lm.pack([[2, 5, 6], [2, 7], [2, 8, 9, 10, 11, 12, 13], [2, 4]], 5)
    np.testing.assert_array_equal(rows, [
        [2, 5, 6, 2, 7],
        [2, 8, 9, 10, 11],  # a paragraph longer than a row is cut
        [12, 13, 2, 4, 0],
    ])
    assert rows.dtype == np.int32


def test_targets_are_the_next_tokens_and_padding_has_no_weight():
    rows = np.array([[2, 5, 6, 7, 0, 0], [2, 8, 9, 10, 11, 12]], "int32")
    x, y, weights = austen_lm.causal_lm_data(rows)
    np.testing.assert_array_equal(x["token_ids"], rows[:, :-1])
    np.testing.assert_array_equal(x["padding_mask"], [[1, 1, 1, 1, 0]] + [[1] * 5])
    np.testing.assert_array_equal(y, rows[:, 1:])
    # The last word's target is padding: it has no weight either.
    np.testing.assert_array_equal(weights, [[1, 1, 1, 0, 0], [1] * 5])


def tiny_models():
    keras.utils.set_random_seed(0)
    teacher = austen_lm.language_model(2, 20, 8, "teacher", hidden_dim=16)
    student = austen_lm.language_model(1, 20, 8, "student", hidden_dim=16)
    return teacher, student


def tiny_batch():
    rng = np.random.default_rng(0)
    lengths = [9, 7, 4, 2, 9, 5]
    rows = np.zeros((len(lengths), 9), "int32")
    for i, n in enumerate(lengths):
        rows[i, :n] = rng.integers(1, 20, n)
    return austen_lm.causal_lm_data(rows)


def test_gpt2_logits_carry_no_keras_mask():
    # So padding must reach the losses as `sample_weight`.
    teacher, _ = tiny_models()
    x, _, _ = tiny_batch()
    assert get_keras_mask(teacher(x)) is None


def test_padded_positions_take_no_part_in_either_loss():
    _, student = tiny_models()
    x, y, weights = tiny_batch()
    # A teacher far from the untrained student, given as its logits.
    teacher_logits = random_logits(y.shape + (20,), seed=2)
    student_logits = np.asarray(
        keras.ops.convert_to_numpy(student(x, training=False)), np.float64
    )
    distiller = keras_distill.Distiller(
        Precomputed(), student,
        [KD(temperature=2.0), KD(temperature=1.0, divergence="reverse",
                                 name="reverse_kl")],
    )
    distiller.compile(loss=austen_lm.SCCE)

    def losses(logits, sample_weight):
        data = {"inputs": x, "logits": logits}
        return distiller.evaluate(data, y, sample_weight=sample_weight,
                                  batch_size=len(y), verbose=0, return_dict=True)

    logs = losses(teacher_logits, weights)
    # Sums over the real tokens, divided by all positions.
    positions = weights.size
    forward = ref_kd(teacher_logits, student_logits, 2.0)
    reverse = ref_kd(teacher_logits, student_logits, 1.0, "reverse")
    cross_entropy = -np.take_along_axis(
        np_log_softmax(student_logits), y[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(logs["kd"], (forward * weights).sum() / positions,
                               rtol=1e-4)
    np.testing.assert_allclose(logs["reverse_kl"],
                               (reverse * weights).sum() / positions, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"],
                               (cross_entropy * weights).sum() / positions,
                               rtol=1e-4)

    # Any teacher logits at the padded targets give the same losses...
    rng = np.random.default_rng(1)
    noise = rng.normal(scale=10.0, size=teacher_logits.shape).astype("float32")
    padded = (weights == 0)[..., None]
    garbage = np.where(padded, noise, teacher_logits)
    changed = losses(garbage, weights)
    for name in ("kd", "reverse_kl", "student_loss"):
        np.testing.assert_allclose(changed[name], logs[name], rtol=1e-5)
    # ...whereas without the weights the padding counts.
    unweighted = losses(garbage, None)
    assert unweighted["kd"] > 1.5 * losses(teacher_logits, None)["kd"]
    # And one real target's teacher logits do change them.
    moved = teacher_logits.copy()
    moved[0, 0] = noise[0, 0]
    assert losses(moved, weights)["kd"] != pytest.approx(logs["kd"], rel=1e-3)


def test_perplexity_counts_only_the_real_targets():
    _, student = tiny_models()
    x, y, weights = tiny_batch()
    logits = np.asarray(keras.ops.convert_to_numpy(student(x, training=False)),
                        np.float64)
    cross_entropy = -np.take_along_axis(np_log_softmax(logits), y[..., None],
                                        -1)[..., 0]
    expected = np.exp(cross_entropy[weights > 0].mean())
    # In batches of 4 rows: the mean is over tokens, not over batches.
    ppl = austen_lm.perplexity(student, x, y, weights, batch_size=4)
    np.testing.assert_allclose(ppl, expected, rtol=1e-4)
    # An untrained model guesses about uniformly over its 20 token ids.
    assert 10.0 < ppl < 40.0


@pytest.mark.slow
def test_quick_mode_prints_finite_perplexities_below_the_vocabulary():
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "austen_lm.py"), "--quick"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"backend {keras.backend.backend()}" in result.stdout, result.stdout
    rows = {}
    for line in result.stdout.splitlines():
        # Each perplexity's spread is "-": one seed.
        match = re.match(r"(.+?)\s+([\d.]+|nan|inf)\s+-\s+([\d.]+|nan|inf)"
                         r"\s+-\s+(\d+)\s+[\d.]+$", line)
        if match:
            rows[match.group(1)] = (float(match.group(2)), float(match.group(3)),
                                    int(match.group(4)))
    assert set(rows) == {
        "teacher (4 layers)", "student, labels only",
        "student + KD (forward KL)", "student + reverse KL",
    }, result.stdout
    for name, (test, validation, params) in rows.items():
        assert 1.0 < test < 2000 and 1.0 < validation < 2000, (name, test)
    assert rows["teacher (4 layers)"][2] > rows["student, labels only"][2]
    assert rows["student + KD (forward KL)"][2] == rows["student, labels only"][2]
