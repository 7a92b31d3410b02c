"""Tests of attention taps, `attention_map_loss` and `TransformerAttention`.

Attention probabilities read by the taps are checked against a NumPy
multi-head attention computed from the layer's own weights; the loss values
against the float64 references `ref_attention_map_loss` (TinyBERT's MSE,
MiniLM's KL) in tests/reference.py.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import TransformerAttention
from keras_distill.losses import attention_map_loss
from keras_distill.losses import uniform_layer_map
from keras_distill.taps import LayerTaps
from tests.reference import assert_close
from tests.reference import np_attention_probabilities
from tests.reference import np_softmax
from tests.reference import ref_attention_map_loss
from tests.reference import to_np

LENGTH, VOCAB = 6, 20
SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def transformer(depth, width, name, heads=2, causal=False, mask_zero=False):
    """A small Functional transformer classifier over padded token ids.

    Padding is masked by `Embedding(mask_zero=True)` (Keras's implicit masks,
    which reach the first attention layer) or, by default, by an explicit
    attention mask given to every layer.
    """
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, width, mask_zero=mask_zero, name="embed")(tokens)
    real = keras.ops.not_equal(tokens, 0)
    pairs = None if mask_zero else real[:, :, None] & real[:, None, :]
    for i in range(depth):
        attended = keras.layers.MultiHeadAttention(
            heads, width // heads, name=f"attention_{i}"
        )(x, x, attention_mask=pairs, use_causal_mask=causal)
        x = keras.layers.LayerNormalization(name=f"block_{i}")(
            keras.layers.Add()([x, attended])
        )
    # Padded positions stay out of the pooling: Keras's fused attention and
    # its explicit softmax disagree on queries that may attend to nothing.
    x = keras.layers.GlobalAveragePooling1D()(x, mask=None if mask_zero else real)
    return keras.Model(tokens, keras.layers.Dense(3)(x), name=name)


def token_batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, LENGTH))
    ids[: n // 2, 4:] = 0  # half the samples padded at the last two positions
    return ids.astype("int32"), rng.integers(0, 3, n)


def probabilities(seed):
    """Random attention probabilities `(B=2, heads=3, T=4, S=4)`."""
    return np_softmax(np.random.default_rng(seed).normal(size=(2, 3, 4, 4)) * 2)


# ---------------------------------------------------------------------------
# Taps of attention probabilities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mask_zero", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_tapped_scores_are_the_layers_attention_probabilities(causal, mask_zero):
    model = transformer(1, 8, "model", causal=causal, mask_zero=mask_zero)
    ids, _ = token_batch()
    taps = LayerTaps(model, ["attention_0:attention", "embed"])
    outputs, features = taps(ids)

    mha = model.get_layer("attention_0")
    x = to_np(features["embed"])
    keep = ids != 0
    expected = np_attention_probabilities(
        x, x, to_np(mha.query_dense.kernel), to_np(mha.key_dense.kernel),
        to_np(mha.query_dense.bias), to_np(mha.key_dense.bias), keep,
    )
    if causal:
        expected = expected * np.tril(np.ones((LENGTH, LENGTH)))
        expected = expected / expected.sum(-1, keepdims=True)
    # Keras zeroes the rows of padded queries, which attend to nothing.
    expected = expected * keep[:, None, :, None]
    recorded = features["attention_0:attention"]
    assert_close(recorded["scores"], expected, rtol=1e-4, atol=1e-6)
    mask = np.broadcast_to(to_np(recorded["mask"]), (8, LENGTH, LENGTH))
    want = keep[:, :, None] & keep[:, None, :]
    if causal:
        want = want & np.tril(np.ones((LENGTH, LENGTH), bool))
    np.testing.assert_array_equal(mask.astype(bool), want)
    # Asking for the scores does not change what the model computes.
    assert_close(outputs, to_np(model(ids)), rtol=1e-5, atol=1e-6)


def test_a_nested_attention_layer_is_tapped_and_a_block_without_one_refused():
    # (A block holding exactly one attention layer, keras-hub's
    # TransformerEncoder, is tapped through it in tests/test_keras_hub.py.)
    inputs = keras.Input((4, 8))
    block = keras.Sequential(
        [keras.Input((4, 8)), keras.layers.Dense(8, name="pre")], name="block"
    )
    mha = keras.layers.MultiHeadAttention(2, 4, name="inner")
    x = block(inputs)
    model = keras.Model(inputs, mha(x, x))
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    _, via_model = LayerTaps(model, ["inner:attention"])(x)
    assert tuple(via_model["inner:attention"]["scores"].shape) == (2, 2, 4, 4)
    with pytest.raises(ValueError, match="contains none"):
        LayerTaps(model, ["block:attention"])


def test_ambiguous_and_flash_attention_layers_are_refused():
    inputs = keras.Input((4, 8))
    first = keras.layers.MultiHeadAttention(2, 4, name="first")
    second = keras.layers.MultiHeadAttention(2, 4, name="second")
    inner = keras.Model(inputs, second(first(inputs, inputs), inputs), name="pair")
    outer = keras.Model(inputs, inner(inputs))
    with pytest.raises(ValueError, match=r"several: \['pair/first', 'pair/second'\]"):
        LayerTaps(outer, ["pair:attention"])

    flash = keras.layers.MultiHeadAttention(2, 4, flash_attention=True, name="flash")
    model = keras.Model(inputs, flash(inputs, inputs))
    with pytest.raises(ValueError, match="flash_attention=False"):
        LayerTaps(model, ["flash:attention"])


# ---------------------------------------------------------------------------
# attention_map_loss and the layer map
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_attention_map_loss_matches_the_reference(kind):
    t, s = probabilities(1), probabilities(2)
    assert_close(attention_map_loss(t, s, kind), ref_attention_map_loss(t, s, kind))
    keys = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    t_masked = np.where(keys[:, None, None], t, 0.0)
    t_masked /= t_masked.sum(-1, keepdims=True)
    s_masked = np.where(keys[:, None, None], s, 0.0)
    s_masked /= s_masked.sum(-1, keepdims=True)
    assert_close(
        attention_map_loss(t_masked, s_masked, kind, mask=keys[:, None, :]),
        ref_attention_map_loss(t_masked, s_masked, kind, keys),
    )


def test_attention_map_loss_by_hand():
    # One head, one query, keys [0.5, 0.5] against [0.9, 0.1]; the third key
    # is masked out.
    t = np.array([[[[0.5, 0.5, 0.0]]]], "float32")
    s = np.array([[[[0.9, 0.1, 0.0]]]], "float32")
    keys = np.array([[[True, True, False]]])
    assert_close(attention_map_loss(t, s, "mse", keys), [[0.16]])
    assert_close(
        attention_map_loss(t, s, "kl", keys),
        [[0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)]],
    )
    assert_close(attention_map_loss(t, t, "kl"), [[0.0]])


def test_uniform_layer_map():
    assert uniform_layer_map(4, 2) == [1, 3]
    assert uniform_layer_map(12, 4) == [2, 5, 8, 11]
    assert uniform_layer_map(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="multiple"):
        uniform_layer_map(3, 2)


def test_layer_map_picks_the_teacher_layers_read():
    loss = TransformerAttention(
        [f"attention_{i}" for i in range(4)], ["attention_0", "attention_1"]
    )
    # Student layer i learns from teacher layer 2i + 1: its attention
    # probabilities and its output (the hidden states).
    assert loss.tap_paths("teacher") == (
        "attention_1:attention", "attention_1", "attention_3:attention", "attention_3",
    )
    assert loss.tap_paths("student") == (
        "attention_0:attention", "attention_0", "attention_1:attention", "attention_1",
    )
    assert not loss.built  # the projections need the hidden states' widths


def test_deprecated_layer_list_arguments_warn_and_map_the_same_layers():
    teacher_paths = [f"attention_{i}" for i in range(4)]
    student_paths = ["attention_0", "attention_1"]
    with pytest.warns(DeprecationWarning) as record:
        old = TransformerAttention(
            teacher_layers=teacher_paths, student_layers=student_paths, layer_map=[0, 2]
        )
    messages = [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]
    assert any("teacher_layers=" in m and "pass teacher=" in m for m in messages), messages
    assert any("student_layers=" in m and "pass student=" in m for m in messages), messages
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        new = TransformerAttention(teacher_paths, student_paths, layer_map=[0, 2])
    assert not [w for w in record if "is deprecated" in str(w.message)]
    assert old.get_config() == new.get_config()
    assert old.tap_paths("teacher") == new.tap_paths("teacher") == (
        "attention_0:attention", "attention_0", "attention_2:attention", "attention_2",
    )
    assert old.tap_paths("student") == new.tap_paths("student")


def test_direct_call_on_what_its_sources_read_matches_the_reference():
    """Built and called on what each pair's sources read, as the Distiller
    hands them over: per pair, a dict of the attention probabilities
    ("scores", with the layer's mask) and the layer's output ("hidden")."""
    rng = np.random.default_rng(3)
    batch, heads, length = 3, 2, 4
    real = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
    pairs_mask = real[:, :, None] & real[:, None, :]  # (B, T, S)

    def attention(seed):
        scores = np.random.default_rng(seed).normal(size=(batch, heads, length, length))
        kept = np.where(pairs_mask[:, None], np.exp(2 * scores), 0.0)
        # Padded queries attend to nothing: Keras gives them rows of zeros.
        total = np.maximum(kept.sum(-1, keepdims=True), 1e-30)
        return (kept / total).astype("float32")

    teacher = [
        {"scores": {"scores": attention(10 + i)},
         "hidden": rng.normal(size=(batch, length, 8)).astype("float32")}
        for i in range(2)
    ]
    student = [
        {"scores": {"scores": attention(20 + i), "mask": pairs_mask},
         "hidden": rng.normal(size=(batch, length, 6)).astype("float32")}
        for i in range(2)
    ]
    loss = TransformerAttention(
        ["t0", "t1"], ["s0", "s1"], attention_weight=2.0, hidden_weight=0.5
    )
    loss.build(teacher, student)
    assert loss.built
    assert [tuple(c.kernel.shape) for c in loss.hidden.connectors] == [(6, 8), (6, 8)]
    w = np.array([0.5, 2.0, 1.0], "float32")
    value = loss.compute_loss(teacher, student, sample_weight=w)

    expected = 0.0
    queries = real * w[:, None]
    for t, s, connector in zip(teacher, student, loss.hidden.connectors):
        per_query = ref_attention_map_loss(
            t["scores"]["scores"], s["scores"]["scores"], "mse", pairs_mask[:, None]
        )
        expected += 2.0 * (per_query * queries).sum() / real.sum()
        kernel, bias = to_np(connector.kernel), to_np(connector.bias)
        per_position = ((s["hidden"] @ kernel + bias - t["hidden"]) ** 2).mean(-1)
        expected += 0.5 * (per_position * queries).sum() / real.sum()
    assert_close(value, expected, rtol=1e-5)


def test_bad_arguments_are_refused():
    t = [f"block_{i}" for i in range(4)]
    with pytest.raises(ValueError, match="layer_map"):
        TransformerAttention(t, ["a", "b"], layer_map=[0, 4])
    with pytest.raises(ValueError, match="attention_loss"):
        TransformerAttention(t, ["a", "b"], attention_loss="l1")
    with pytest.raises(ValueError, match=">= 0"):
        TransformerAttention(t, ["a", "b"], hidden_weight=-1)


# ---------------------------------------------------------------------------
# In the Distiller
# ---------------------------------------------------------------------------


def half_depth_distiller(loss, student_heads=2):
    teacher = transformer(4, 8, "teacher")
    student = transformer(2, 6, "student", heads=student_heads)
    distiller = keras_distill.Distiller(teacher, student, loss)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), loss=SCCE)
    return distiller


def tinybert_loss(**kwargs):
    return TransformerAttention(
        [f"attention_{i}" for i in range(4)], ["attention_0", "attention_1"],
        **kwargs,
    )


def test_loss_value_matches_the_reference_on_padded_sequences():
    loss = TransformerAttention(
        [f"attention_{i}" for i in range(4)], ["attention_0", "attention_1"],
        hidden_weight=0.5, attention_loss="kl",
    )
    distiller = half_depth_distiller(loss)
    ids, y = token_batch()
    weights = np.linspace(0.0, 1.5, len(y)).astype("float32")
    logs = distiller.evaluate(
        ids, y, sample_weight=weights, batch_size=8, verbose=0, return_dict=True
    )

    _, t_feat = LayerTaps(distiller.teacher, loss.tap_paths("teacher"))(ids)
    _, s_feat = LayerTaps(distiller.student, loss.tap_paths("student"))(ids)
    keep = ids != 0
    expected = 0.0
    for (t_name, s_name), connector in zip(
        [("attention_1", "attention_0"), ("attention_3", "attention_1")],
        loss.hidden.connectors,
    ):
        per_query = ref_attention_map_loss(
            to_np(t_feat[t_name + ":attention"]["scores"]),
            to_np(s_feat[s_name + ":attention"]["scores"]), "kl", keep,
        )
        w = weights[:, None] * keep
        expected += np.where(keep, per_query * w, 0.0).sum() / keep.sum()
        projected = to_np(connector(s_feat[s_name]))
        per_position = ((projected - to_np(t_feat[t_name])) ** 2).mean(-1)
        expected += 0.5 * (per_position * w).sum() / keep.sum()
    np.testing.assert_allclose(logs["transformer_attention"], expected, rtol=1e-4)


def test_training_lowers_the_loss_and_trains_the_projections():
    distiller = half_depth_distiller(tinybert_loss())
    connector = distiller.distillation_losses[0].hidden.connectors[0]
    assert any(v is connector.kernel for v in distiller.trainable_variables)
    before = to_np(connector.kernel)
    ids, y = token_batch(32)
    history = distiller.fit(ids, y, epochs=4, batch_size=8, verbose=0).history
    losses = history["transformer_attention"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(to_np(connector.kernel), before)


def test_head_count_mismatch_is_explained_before_training():
    # Checked on the models' symbolic passes, when the Distiller is built.
    with pytest.raises(ValueError, match="same number of heads"):
        half_depth_distiller(tinybert_loss(), student_heads=3)
    loss = tinybert_loss()
    scores = lambda heads: {"scores": np.zeros((2, heads, 6, 6), "float32")}  # noqa: E731
    with pytest.raises(ValueError, match=r"\(2, 2, 6, 6\) and \(2, 3, 6, 6\)"):
        loss.validate_outputs({"scores": scores(2)}, {"scores": scores(3)})


def test_attention_only_needs_no_projection_and_round_trips(tmp_path):
    loss = tinybert_loss(hidden_weight=0.0, layer_map=[0, 2])
    assert loss.hidden is None and loss.built
    assert loss.tap_paths("student") == ("attention_0:attention", "attention_1:attention")
    assert loss.tap_paths("teacher") == ("attention_0:attention", "attention_2:attention")
    restored = TransformerAttention.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()

    distiller = half_depth_distiller(tinybert_loss(attention_loss="kl"))
    ids, y = token_batch()
    distiller.fit(ids, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    reloaded = keras.saving.load_model(path)
    original = distiller.evaluate(ids, y, verbose=0, return_dict=True)
    again = reloaded.evaluate(ids, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        again["transformer_attention"], original["transformer_attention"], rtol=1e-5
    )
