"""Taps: what inner layers return, captured during a model's own forward pass.

A `LayerTaps` finds layers by name or by path into nested models and layers
(`"backbone/transformer_layer_2"`), in Sequential, Functional and subclassed
models alike, and records what they return while the model runs. The model
runs once and returns its usual outputs; the features come from that same
pass.

How: when a `LayerTaps` is built, each tapped layer gets, once, a thin hook
on the methods Keras runs for it (`call`, or `quantized_call` once the layer
is quantized), and each layer on the way to it a hook on
`rematerialized_call`. The hooks stay on those layer objects and do nothing
unless a tap is recording on the current thread: the layers compute, save
and load as before, and no method is swapped per pass. A pass records into
its own frame on a per-thread stack, so passes in several threads (the
replicas of `tf.distribute`) and passes inside passes do not mix. Under
`keras.RematScope`, a rematerialised layer's function also returns the
features recorded inside it, so that they leave `jax.checkpoint`,
`tf.recompute_grad` or `torch.utils.checkpoint` as its outputs do, with
their gradients.

A path ending in `":attention"` (`"backbone/transformer_layer_2:attention"`)
taps the attention probabilities of the `keras.layers.MultiHeadAttention` at
that path, or of the one such layer inside it (a keras-hub transformer
layer). They are recorded as `{"scores": (B, heads, T, S)}`, plus `"mask"`
(boolean, broadcastable to `(B, T, S)`) when the layer masks attention. The
layer's output is untouched; where it runs a fused attention kernel, the
probabilities are formed in a second, explicit pass over its queries and
keys.
"""

import contextlib
import threading
from typing import NamedTuple

import keras

from keras_distill._keras_internals import ATTENTION_METHOD
from keras_distill._keras_internals import LAYER_CALL_METHODS
from keras_distill._keras_internals import REMAT_METHOD
from keras_distill._keras_internals import attention_scores_call
from keras_distill._keras_internals import check_attention_scores_available
from keras_distill._keras_internals import child_layers
from keras_distill._keras_internals import install_method_hook
from keras_distill._keras_internals import is_rematerialized
from keras_distill._keras_internals import set_untracked

ATTENTION = ":attention"


class ForwardPass(NamedTuple):
    """What one forward pass of a model gave: its outputs and its taps.

    Attributes:
        outputs: the model's outputs, as the model returns them.
        features: `{path: value}`, what each tapped layer returned (or its
            attention probabilities, for a path ending in `":attention"`).
    """

    outputs: object
    features: dict


def layer_paths(layer, prefix=""):
    """Every layer below `layer`, as `"outer/inner"` paths, depth first."""
    paths = []
    for child in child_layers(layer):
        if isinstance(child, keras.layers.InputLayer):
            continue
        path = f"{prefix}{child.name}"
        paths.append(path)
        paths.extend(layer_paths(child, prefix=f"{path}/"))
    return paths


def _chain(model, path, role):
    """The layers from `model`'s child down to the one at `path`."""
    chain, layer = [], model
    for name in path.split("/"):
        matches = [child for child in child_layers(layer) if child.name == name]
        if len(matches) > 1:
            raise ValueError(
                f"In the {role} {model.name!r}, {len(matches)} layers on the "
                f"path {path!r} are named {name!r}; give them distinct names."
            )
        if not matches:
            raise ValueError(
                f"The {role} {model.name!r} has no layer at {path!r}. "
                f"Available layer paths: {layer_paths(model)}."
            )
        layer = matches[0]
        chain.append(layer)
    return chain


def find_layer(model, path, role="model"):
    """The layer at `path` (names joined by "/") inside `model`.

    Args:
        model: a Keras model or layer.
        path: a layer name, or a path of names into nested models/layers.
        role: what to call the model in errors. Defaults to `"model"`.

    Returns:
        The `keras.layers.Layer`.

    Raises:
        ValueError: naming the available paths when none matches.
    """
    return _chain(model, path, role)[-1]


def _attention_chain(model, path, role):
    """The chain to the `MultiHeadAttention` at `path`, or the only one in it."""
    chain = _chain(model, path, role)
    if isinstance(chain[-1], keras.layers.MultiHeadAttention):
        return chain
    inner = [
        p for p in layer_paths(chain[-1])
        if isinstance(find_layer(chain[-1], p), keras.layers.MultiHeadAttention)
    ]
    if len(inner) != 1:
        found = f"several: {[f'{path}/{p}' for p in inner]}" if inner else "none"
        raise ValueError(
            f"The {role}'s layer {path!r} should be a "
            "keras.layers.MultiHeadAttention or contain exactly one, to tap "
            f"its attention scores; it contains {found}. Name the attention "
            "layer's own path."
        )
    return chain + _chain(chain[-1], inner[0], role)


def attention_layer(model, path, role="model"):
    """The `MultiHeadAttention` at `path`, or the only one inside that layer.

    Raises:
        ValueError: when the layer at `path` holds no attention layer or
            several (naming their paths).
    """
    return _attention_chain(model, path, role)[-1]


class LayerTaps:
    """Runs a model once and returns its outputs and its tapped layers' outputs.

    Args:
        model: the Keras model.
        paths: layer names or paths whose outputs to capture.
        role: what to call the model in errors (`"teacher"`, `"student"`).

    Example:

    ```python
    taps = LayerTaps(model, ["backbone/transformer_layer_1"])
    outputs, features = taps(x, training=False)
    features["backbone/transformer_layer_1"]  # (batch, length, hidden)
    ```
    """

    def __init__(self, model, paths, role="model"):
        self.model = model
        self.role = role
        self.paths = list(dict.fromkeys(paths))
        self.layers = {}  # path -> the tapped layer
        # (id(layer), "output" or "attention") -> the paths it is tapped as
        self.wanted = {}
        # ids of the tapped layers and of every layer that holds one
        self.scope = {id(model)}
        for path in self.paths:
            if path.endswith(ATTENTION):
                chain = _attention_chain(model, path[: -len(ATTENTION)], role)
                check_attention_scores_available(chain[-1], path, role)
                key = (id(chain[-1]), "attention")
                install_method_hook(chain[-1], ATTENTION_METHOD, _attention_hook(key))
            else:
                chain = _chain(model, path, role)
                key = (id(chain[-1]), "output")
                for method in LAYER_CALL_METHODS:
                    install_method_hook(chain[-1], method, _output_hook(key))
            self.wanted.setdefault(key, []).append(path)
            self.layers[path] = chain[-1]
            self.scope.update(id(layer) for layer in chain)
        # Every layer on the way to a tapped one passes the features out of
        # its rematerialisation; every rematerialised one skips it while
        # shapes are inferred (TensorFlow cannot rematerialise in a graph).
        for layer in {id(l): l for l in _tree(model)}.values():
            if id(layer) in self.scope or is_rematerialized(layer):
                install_method_hook(layer, REMAT_METHOD, _remat_hook(id(layer)))

    def __call__(self, inputs, training=None):
        """Runs the model on `inputs`; returns a `ForwardPass`."""
        return self._run(inputs, training, symbolic=False)

    def _run(self, inputs, training, symbolic):
        with _recording(_Frame(self, symbolic)) as frame:
            outputs = self.model(inputs, training=training)
        missing = [path for path in self.paths if path not in frame.values]
        if missing:
            raise ValueError(
                f"The {self.role}'s layers {missing} did not run in its "
                "forward pass, so there is nothing to distil from them."
            )
        return ForwardPass(outputs, frame.values)

    def symbolic(self):
        """The `ForwardPass` of `keras.KerasTensor`s: shapes and dtypes.

        Inferred by Keras's symbolic shape inference, without running the
        model on data, from its symbolic inputs (Functional and Sequential
        models) or the input shape it was built with; a Functional or
        Sequential model without taps gives its own symbolic outputs. Axes
        of unknown size after the batch (a variable sequence length) are
        inferred at sizes 2 and 3, which every layer accepts (a position
        embedding's maximum length included), and are `None` in the result
        where the two differ; the batch axis is always `None`.

        Returns:
            A `ForwardPass`, or `None` when the model's input shape is not
            known (a subclassed model built by `build()` without a shape).
        """
        outputs = None if self.paths else _symbolic_outputs(self.model)
        if outputs is not None:
            return ForwardPass(outputs, {})
        specs = self._input_specs()
        if specs is None:
            return None
        unknown = any(
            None in x.shape[1:] for x in keras.tree.flatten(specs)
        )
        probes = [
            _SymbolicPass(self)(
                keras.tree.map_structure(lambda x: _sized(x, size), specs)
            )
            for size in ((2, 3) if unknown else (2,))
        ]
        merged = keras.tree.map_structure(_merged, *probes)
        return ForwardPass(*merged)

    def _input_specs(self):
        """The model's inputs as a structure of fresh `keras.KerasTensor`s."""
        inputs = symbolic_inputs(self.model)
        if inputs is not None:
            return keras.tree.map_structure(
                lambda x: keras.KerasTensor(x.shape, x.dtype), _plain(inputs)
            )
        build_config = self.model.get_build_config() or {}
        if "input_shape" not in build_config:
            return None
        return keras.tree.map_shape_structure(
            lambda shape: keras.KerasTensor((None, *shape[1:]), "float32"),
            _plain(build_config["input_shape"]),
        )


def _symbolic_outputs(model):
    """A Functional or Sequential model's symbolic outputs, in their
    structure; `None` for a subclassed model."""
    if symbolic_inputs(model) is None:
        return None
    try:
        return model.outputs[0] if isinstance(model, keras.Sequential) else model.output
    except (AttributeError, ValueError):
        return None


def _plain(structure):
    """`structure` with Keras's tracked dicts and lists made plain ones."""
    if isinstance(structure, dict):
        return {key: _plain(value) for key, value in structure.items()}
    if isinstance(structure, list):
        return [_plain(value) for value in structure]
    return structure


def _sized(spec, size):
    """`spec` with each axis of unknown size given `size`."""
    return keras.KerasTensor(
        tuple(size if d is None else d for d in spec.shape), spec.dtype
    )


def _merged(*probes):
    """One tensor's spec from its probes: the batch axis, and every axis of
    another size in another probe, unknown."""
    axes = zip(*(tuple(p.shape)[1:] for p in probes))
    shape = (None, *(a[0] if len(set(a)) == 1 else None for a in axes))
    return keras.KerasTensor(shape, probes[0].dtype)


class _SymbolicPass(keras.layers.Layer):
    """A tapped pass as a layer, so that Keras infers its output shapes."""

    def __init__(self, taps):
        super().__init__(autocast=False, name="symbolic_pass")
        set_untracked(self, "taps", taps)  # not a sublayer of this one

    def call(self, inputs):
        return tuple(self.taps._run(inputs, training=False, symbolic=True))


def _tree(layer):
    """`layer` and every layer inside it."""
    yield layer
    for child in child_layers(layer):
        yield from _tree(child)


def symbolic_inputs(model):
    """A Functional or Sequential model's symbolic inputs, in their
    structure (a dict stays a dict); `None` for a subclassed model."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    try:
        return model.input
    except AttributeError:  # a Sequential built with .build(shape)
        return inputs[0] if len(inputs) == 1 else inputs


# -- Recording ------------------------------------------------------------


class _Frame:
    """What one pass of a `LayerTaps` records, on one thread."""

    def __init__(self, taps, symbolic=False):
        self.taps = taps
        self.symbolic = symbolic  # shapes only: nothing is rematerialised
        self.values = {}
        self.running = set()  # ids of tapped layers whose call is running
        self.suspended = 0  # > 0 while Keras infers shapes inside the pass

    def wants(self, key):
        return not self.suspended and key in self.taps.wanted

    def reaches(self, layer_id):
        return not self.suspended and layer_id in self.taps.scope

    def record(self, key, value):
        for path in self.taps.wanted[key]:
            self.keep(path, value)

    def keep(self, path, value):
        if path in self.values:
            raise ValueError(
                f"The {self.taps.role}'s layer {path!r} runs more than once "
                "per forward pass (a shared layer), so its output is "
                "ambiguous. Tap a layer that runs once."
            )
        self.values[path] = value


_threads = threading.local()


def _frames():
    if not hasattr(_threads, "frames"):
        _threads.frames = []
    return _threads.frames


def _active():
    frames = _frames()
    return frames[-1] if frames else None


@contextlib.contextmanager
def _recording(frame):
    frames = _frames()
    frames.append(frame)
    try:
        yield frame
    finally:
        frames.pop()


def _output_hook(key):
    """Records what the layer's call returns, when a pass wants it."""

    def make_hook(original):
        def hook(*args, **kwargs):
            frame = _active()
            # `running`: a quantized call that runs `call` records once.
            if frame is None or not frame.wants(key) or key[0] in frame.running:
                return original(*args, **kwargs)
            frame.running.add(key[0])
            try:
                outputs = original(*args, **kwargs)
            finally:
                frame.running.discard(key[0])
            frame.record(key, outputs)
            return outputs

        return hook

    return make_hook


def _remat_hook(layer_id):
    """Lets features recorded inside a rematerialised call leave it.

    The function Keras rematerialises returns, besides the layer's outputs,
    what the taps recorded inside it (into a frame of its own), and the
    pass keeps those as it keeps the layer's outputs. While Keras decides
    whether to rematerialise (`"larger_than"` infers the output's shape by
    tracing the call), nothing is recorded.
    """

    def make_hook(original):
        def hook(layer_call, *args, **kwargs):
            frame = _active()
            if frame is not None and frame.symbolic and not frame.suspended:
                return layer_call
            if frame is None or not frame.reaches(layer_id):
                return original(layer_call, *args, **kwargs)

            def exporting(*call_args, **call_kwargs):
                with _recording(_Frame(frame.taps, symbolic=False)) as inner:
                    outputs = layer_call(*call_args, **call_kwargs)
                return outputs, inner.values

            frame.suspended += 1
            try:
                rematerialized = original(exporting, *args, **kwargs)
            finally:
                frame.suspended -= 1

            def run(*call_args, **call_kwargs):
                outputs, values = rematerialized(*call_args, **call_kwargs)
                for path, value in values.items():
                    frame.keep(path, value)
                return outputs

            return run

        return hook

    return make_hook


def _attention_hook(key):
    """Records the attention probabilities, when a pass wants them."""

    def wanted():
        frame = _active()
        return frame is not None and frame.wants(key)

    def record(scores, mask):
        value = {"scores": scores}
        if mask is not None:
            value["mask"] = mask
        _active().record(key, value)

    def make_hook(compute_attention):
        return attention_scores_call(compute_attention, wanted, record)

    return make_hook
