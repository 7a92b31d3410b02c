"""keras-hub models as teachers and students (small configurations, built
from their constructors: presets would download from a hub)."""

import keras
import keras_hub
import numpy as np

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import HiddenCosine
from keras_distill.losses import TransformerAttention
from keras_distill.taps import LayerTaps
from tests.reference import ref_attention_map_loss
from tests.reference import ref_hidden_cosine
from tests.reference import to_np


def bert_classifier(num_layers, name):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=num_layers, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=12, name="backbone",
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None, name=name
    )


def batch(n=32):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (n, 12))
    ids[:, 9:] = 0
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
         "padding_mask": ids != 0}
    return x, rng.integers(0, 2, n)


def test_transformer_layer_outputs_are_tapped_in_the_forward_pass():
    model = bert_classifier(2, "teacher")
    x, _ = batch(4)
    taps = LayerTaps(model, ["backbone/transformer_layer_1"])
    outputs, features = taps(x)
    # The same layer's output through a Functional model of the backbone
    # that ends there: an independent path to the same tensor.
    backbone = model.backbone
    up_to_layer = keras.Model(
        backbone.inputs, backbone.get_layer("transformer_layer_1").output
    )
    expected = up_to_layer({k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    assert tuple(features["backbone/transformer_layer_1"].shape) == (4, 12, 16)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features["backbone/transformer_layer_1"]),
        keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5,
    )
    # Inferred without data: the sequence length is dynamic in keras-hub's
    # inputs, and so reported.
    symbolic = taps.symbolic()
    assert isinstance(symbolic.features["backbone/transformer_layer_1"], keras.KerasTensor)
    assert tuple(symbolic.features["backbone/transformer_layer_1"].shape) == (None, None, 16)
    assert tuple(symbolic.outputs.shape) == (None, 2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5, atol=1e-6,
    )


def test_half_depth_bert_student_learns_hidden_states_and_logits():
    x, y = batch()
    teacher, student = bert_classifier(2, "teacher"), bert_classifier(1, "student")
    distiller = keras_distill.Distiller(
        teacher,
        student,
        [KD(temperature=2.0),
         HiddenCosine("backbone/transformer_layer_1", "backbone/transformer_layer_0",
                      input_mask="padding_mask")],
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = distiller.fit(x, y, epochs=3, batch_size=8, verbose=0).history
    assert history["hidden_cosine"][-1] < history["hidden_cosine"][0]
    assert np.all(np.isfinite(history["kd"]))

    # Padded positions (the last three of every sample) take no part.
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    _, t_features = LayerTaps(teacher, ["backbone/transformer_layer_1"])(x)
    _, s_features = LayerTaps(student, ["backbone/transformer_layer_0"])(x)
    expected = ref_hidden_cosine(
        to_np(t_features["backbone/transformer_layer_1"]),
        to_np(s_features["backbone/transformer_layer_0"]),
    )[x["padding_mask"]].mean()
    np.testing.assert_allclose(logs["hidden_cosine"], expected, rtol=1e-4)


def test_tinybert_attention_and_hidden_transfer_on_keras_hub_layers():
    x, y = batch()
    teacher, student = bert_classifier(2, "teacher"), bert_classifier(1, "student")
    loss = TransformerAttention(
        ["backbone/transformer_layer_0", "backbone/transformer_layer_1"],
        ["backbone/transformer_layer_0"],
        input_mask="padding_mask",
    )
    assert loss.tap_paths("teacher") == (
        "backbone/transformer_layer_1:attention", "backbone/transformer_layer_1"
    )
    assert loss.tap_paths("student") == (
        "backbone/transformer_layer_0:attention", "backbone/transformer_layer_0"
    )
    distiller = keras_distill.Distiller(teacher, student, [KD(temperature=2.0), loss])
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)

    _, t_feat = LayerTaps(teacher, loss.tap_paths("teacher"))(x)
    _, s_feat = LayerTaps(student, loss.tap_paths("student"))(x)
    keep = x["padding_mask"]
    per_query = ref_attention_map_loss(
        to_np(t_feat["backbone/transformer_layer_1:attention"]["scores"]),
        to_np(s_feat["backbone/transformer_layer_0:attention"]["scores"]),
        "mse", keep,
    )
    projected = to_np(
        loss.hidden.connectors[0](s_feat["backbone/transformer_layer_0"])
    )
    squared = (projected - to_np(t_feat["backbone/transformer_layer_1"])) ** 2
    expected = per_query[keep].mean() + squared.mean(-1)[keep].mean()
    np.testing.assert_allclose(logs["transformer_attention"], expected, rtol=1e-4)

    history = distiller.fit(x, y, epochs=3, batch_size=8, verbose=0).history
    assert history["transformer_attention"][-1] < history["transformer_attention"][0]
