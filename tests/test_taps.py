"""Taps into Sequential, Functional, subclassed, nested, quantized and
rematerialised models, compiled or not, from several threads at once."""

import threading

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill import _keras_internals as internals
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.losses import HiddenCosine
from keras_distill.taps import LayerTaps
from keras_distill.taps import find_layer
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


def np_dense(layer, x, relu=True):
    """A Dense layer's output, computed in NumPy from its weights."""
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    out = np.asarray(x, np.float64) @ kernel + bias
    return np.maximum(out, 0.0) if relu else out


@pytest.mark.parametrize("make", [nested_functional, lambda w, n: subclassed(w)])
def test_taps_return_the_outputs_and_the_features_of_one_pass(make):
    model = make(4, "model")
    nested = "backbone" in layer_paths(model)
    path = "backbone/block_1" if nested else "block/inner"
    x, _ = classification_data(16)
    taps = LayerTaps(model, [path])
    outputs, features = taps(x, training=False)
    np.testing.assert_allclose(to_np(outputs), to_np(model(x)), rtol=1e-6)
    if nested:
        h = np_dense(find_layer(model, "backbone/block_0"), x)
        expected = np_dense(find_layer(model, "backbone/block_1"), h)
    else:
        expected = np_dense(find_layer(model, "block/inner"), x)
    np.testing.assert_allclose(to_np(features[path]), expected, rtol=1e-5, atol=1e-6)
    # The hook is installed once, when the taps are built; a pass adds,
    # removes or swaps nothing on the layer.
    layer = taps.layers[path]
    assert internals.has_method_hook(layer, "call")
    before = dict(vars(layer))
    taps(x, training=False)
    assert vars(layer).keys() == before.keys()
    assert all(vars(layer)[k] is v for k, v in before.items() if k.startswith(("call", "quantized")))
    LayerTaps(model, [path])  # a second tap of the same layer
    assert vars(layer)["call"] is before["call"]


def test_hooks_do_nothing_outside_a_pass():
    model = nested_functional(4, "model")
    x, _ = classification_data(8)
    expected = to_np(model(x))
    LayerTaps(model, ["backbone/block_1", "head"])
    np.testing.assert_allclose(to_np(model(x)), expected, rtol=1e-6)
    np.testing.assert_allclose(to_np(model.predict(x, verbose=0)), expected, rtol=1e-5)


def test_shapes_come_from_symbolic_inference():
    inputs = keras.Input((None, 8))  # a variable sequence length
    hidden = keras.layers.Dense(6, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(hidden))
    symbolic = LayerTaps(model, ["hidden"]).symbolic()
    assert isinstance(symbolic.features["hidden"], keras.KerasTensor)
    assert tuple(symbolic.features["hidden"].shape) == (None, None, 6)
    assert tuple(symbolic.outputs.shape) == (None, 6)
    # A subclassed model: from the input shape it was built with.
    model = subclassed(5)
    assert tuple(LayerTaps(model, ["block/inner"]).symbolic().features["block/inner"].shape) == (None, 5)


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


def fitnet_distiller(**compile_kwargs):
    """A FitNet from a nested Functional teacher to a subclassed student."""
    keras.utils.set_random_seed(1)
    teacher, student = nested_functional(16, "teacher"), subclassed(4)
    hint = FitNet(
        "backbone/block_0", "block/inner", connector=keras.layers.Dense(16)
    )
    distiller = keras_distill.Distiller(teacher, student, hint, student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), **compile_kwargs)
    return distiller


def test_compiled_steps_read_nested_features():
    # `jit_compile=True`: XLA on TensorFlow and JAX, torch.compile on PyTorch.
    x, _ = classification_data(32)
    compiled = fitnet_distiller(jit_compile=True)
    eager = fitnet_distiller(run_eagerly=True)
    for a, b in zip(compiled.get_weights(), eager.get_weights()):
        np.testing.assert_array_equal(a, b)
    hint = np_dense(find_layer(compiled.teacher, "backbone/block_0"), x)
    guided = np_dense(find_layer(compiled.student, "block/inner"), x)
    connector = compiled.distillation_losses[0].connectors[0]
    expected = np.mean((np_dense(connector, guided, relu=False) - hint) ** 2)
    logs = compiled.test_on_batch(x, return_dict=True)
    np.testing.assert_allclose(logs["fit_net"], expected, rtol=1e-4)
    # A training step moves the student as the eager step does: the
    # gradient flows through the features the compiled step recorded.
    compiled.train_on_batch(x)
    eager.train_on_batch(x)
    moved = False
    for a, b, before in zip(
        compiled.student.get_weights(), eager.student.get_weights(),
        fitnet_distiller().student.get_weights(),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        moved = moved or not np.allclose(a, before)
    assert moved


def quantizable_teacher():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", name="hint")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name="teacher")
    return teacher


@pytest.mark.parametrize("mode", ["int8", "float8", "int4"])
def test_quantized_teachers_are_tapped(mode):
    # Keras's quantized layers run `quantized_call`, not `call`.
    x, y = classification_data(32)
    teacher = quantizable_teacher()
    teacher.quantize(mode)
    expected = to_np(keras.Model(teacher.inputs, teacher.get_layer("hint").output)(x))
    features = LayerTaps(teacher, ["hint"])(x, training=False).features
    np.testing.assert_allclose(to_np(features["hint"]), expected, rtol=1e-5, atol=1e-6)
    distiller = keras_distill.Distiller(
        teacher, mlp_student(), [KD(), FitNet("hint", "hidden")]
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    history = distiller.fit(x, y, epochs=4, batch_size=16, verbose=0).history
    assert history["fit_net"][-1] < history["fit_net"][0]


def mlp_student():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(6, activation="relu", name="hidden"),
         keras.layers.Dense(3, name="logits")],
        name="student",
    )


@pytest.mark.parametrize("mode", ["full", "activations"])
def test_rematerialized_models_give_the_same_features_and_gradients(mode):
    x, y = classification_data(32)

    def step(remat):
        keras.utils.set_random_seed(2)
        if remat:
            with keras.RematScope(mode=mode):
                teacher, student = nested_functional(16, "teacher"), subclassed(4)
            # The layers on the tapped paths really are rematerialised.
            for model, path in ((teacher, "backbone/block_1"), (student, "block/inner")):
                assert internals.is_rematerialized(find_layer(model, path))
        else:
            teacher, student = nested_functional(16, "teacher"), subclassed(4)
        hint = FitNet("backbone/block_1", "block/inner", connector=keras.layers.Dense(16))
        distiller = keras_distill.Distiller(teacher, student, [KD(), hint])
        # TensorFlow rematerialises eagerly only (tf.recompute_grad refuses
        # keyword arguments in a graph, in Keras's own layers too).
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE,
                          run_eagerly=keras.backend.backend() == "tensorflow")
        logs = distiller.train_on_batch(x, y, return_dict=True)
        return logs, student.get_weights()

    remat_logs, remat_weights = step(True)
    plain_logs, plain_weights = step(False)
    for key in ("fit_net", "kd", "loss"):
        np.testing.assert_allclose(remat_logs[key], plain_logs[key], rtol=1e-5)
    for a, b in zip(remat_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class Waiting(keras.layers.Layer):
    """The identity, which waits at a barrier for the other threads' passes
    (once `barrier` is set), so that all are inside the model at once."""

    barrier = None

    def call(self, x):
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def test_passes_in_several_threads_keep_their_own_features():
    threads = 3
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    waiting = Waiting(name="wait")
    model = keras.Model(inputs, waiting(hidden))
    taps = LayerTaps(model, ["hidden", "wait"])
    waiting.barrier = threading.Barrier(threads)
    batches = [np.full((2, 8), float(i), "float32") for i in range(threads)]
    results = [None] * threads

    def run(i):
        results[i] = taps(batches[i], training=False).features

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    dense = model.get_layer("hidden")
    for batch, features in zip(batches, results):
        expected = np_dense(dense, batch, relu=False)
        np.testing.assert_allclose(to_np(features["hidden"]), expected, rtol=1e-5)
        np.testing.assert_allclose(to_np(features["wait"]), expected, rtol=1e-5)


class Nesting(keras.layers.Layer):
    """Runs another model's taps inside its own call: a pass in a pass."""

    def __init__(self, inner_taps, **kwargs):
        super().__init__(**kwargs)
        self.inner_taps = inner_taps
        self.inner_features = None

    def call(self, x):
        self.inner_features = self.inner_taps(x * 2.0, training=False).features
        return x


def test_a_pass_inside_a_pass_records_into_its_own():
    inner = nested_functional(4, "inner")
    inner_taps = LayerTaps(inner, ["backbone/block_0"])
    inputs = keras.Input((8,))
    nesting = Nesting(inner_taps, name="nesting")
    outer = keras.Model(inputs, keras.layers.Dense(3, name="head")(nesting(inputs)))
    outer_taps = LayerTaps(outer, ["nesting", "head"])
    x, _ = classification_data(4)
    features = outer_taps(x, training=False).features
    assert sorted(features) == ["head", "nesting"]
    np.testing.assert_allclose(to_np(features["nesting"]), x, rtol=1e-6)
    expected = np_dense(find_layer(inner, "backbone/block_0"), 2.0 * x)
    np.testing.assert_allclose(
        to_np(nesting.inner_features["backbone/block_0"]), expected, rtol=1e-5
    )
