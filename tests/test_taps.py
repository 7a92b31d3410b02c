"""Taps into Sequential, Functional, subclassed and nested models."""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.losses import HiddenCosine
from keras_distill.taps import LayerTaps
from keras_distill.taps import layer_paths
from tests.conftest import classification_data
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def nested_functional(width, name):
    """A task model around a Functional "backbone", as keras-hub builds them."""
    inner_in = keras.Input((8,))
    h = keras.layers.Dense(width, activation="relu", name="block_0")(inner_in)
    h = keras.layers.Dense(width, activation="relu", name="block_1")(h)
    backbone = keras.Model(inner_in, h, name="backbone")
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, name="head")(backbone(inputs))
    return keras.Model(inputs, outputs, name=name)


class Block(keras.layers.Layer):
    """A composite layer (not a model) with a sublayer."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(width, activation="relu", name="inner")

    def call(self, x):
        return self.inner(x) + 0.0


class Subclassed(keras.Model):
    block_class = Block

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.block = self.block_class(width, name="block")
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.block(x))


def subclassed(width):
    model = Subclassed(width)
    model(np.zeros((1, 8), "float32"))
    return model


def test_paths_reach_into_nested_models_and_layers():
    assert layer_paths(nested_functional(4, "m")) == [
        "backbone", "backbone/block_0", "backbone/block_1", "head"
    ]
    assert layer_paths(subclassed(4)) == ["block", "block/inner", "head"]


@pytest.mark.parametrize("make", [nested_functional, lambda w, n: subclassed(w)])
def test_taps_return_the_outputs_and_the_features_of_one_pass(make):
    model = make(4, "model")
    path = "backbone/block_1" if "backbone" in layer_paths(model) else "block/inner"
    x, _ = classification_data(16)
    outputs, features = LayerTaps(model, [path])(x, training=False)
    np.testing.assert_allclose(to_np(outputs), to_np(model(x)), rtol=1e-6)
    layer = model
    for name in path.split("/"):
        layer = [l for l in layer._flatten_layers(False, False) if l.name == name][0]
    assert tuple(features[path].shape) == (16, 4)
    assert "call" not in vars(layer)  # the model is as it was


def test_unknown_path_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"backbone/block_0.*backbone/block_1"):
        LayerTaps(nested_functional(4, "m"), ["backbone/block_9"], "teacher")


class Twins(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(4, name="twin")
        self.second = keras.layers.Dense(4, name="twin")

    def call(self, x):
        return self.second(self.first(x))


def test_ambiguous_names_are_refused():
    model = Twins()
    model(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="2 layers .* named 'twin'"):
        LayerTaps(model, ["twin"])


def test_a_shared_layer_is_refused():
    dense = keras.layers.Dense(8, name="shared")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, dense(dense(inputs)))
    taps = LayerTaps(model, ["shared"])
    with pytest.raises(ValueError, match="more than once"):
        taps(np.zeros((2, 8), "float32"))


class CountingBlock(Block):
    calls = 0

    def call(self, x):
        CountingBlock.calls += 1
        return super().call(x)


class CountingModel(Subclassed):
    block_class = CountingBlock


@pytest.mark.parametrize("loss", ["fitnet", "hidden_cosine"])
def test_subclassed_and_nested_models_distil_features_in_one_pass(loss):
    x, y = classification_data(64)
    teacher = nested_functional(16, "teacher")
    student = CountingModel(16 if loss == "hidden_cosine" else 4)
    student(x[:1])
    feature_loss = (
        FitNet("backbone/block_1", "block/inner")
        if loss == "fitnet"
        else HiddenCosine("backbone/block_1", "block/inner")
    )
    distiller = keras_distill.Distiller(teacher, student, [KD(), feature_loss])
    distiller.compile(loss=SCCE, run_eagerly=True)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)  # builds
    CountingBlock.calls = 0
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert CountingBlock.calls == 3 * 4  # one student pass per step
    name = feature_loss.name
    assert history[name][-1] < history[name][0]


def test_jit_compiled_step_reads_nested_features():
    x, y = classification_data(64)
    teacher, student = nested_functional(16, "teacher"), subclassed(4)
    distiller = keras_distill.Distiller(
        teacher, student, FitNet("backbone/block_0", "block/inner"),
        student_loss_weight=0.0,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    history = distiller.fit(x, epochs=3, batch_size=16, verbose=0).history
    assert np.all(np.isfinite(history["fit_net"]))
    assert history["fit_net"][-1] < history["fit_net"][0]
