"""Taps: outputs of inner layers, captured during a model's own forward pass.

A `LayerTaps` finds layers by name or by path into nested models and layers
(`"backbone/transformer_layer_2"`), in Sequential, Functional and subclassed
models alike, and records what they return while the model runs. The model
runs once and returns its usual outputs; the features come from that same
pass. Nothing about the model changes: for the duration of one forward pass
each tapped layer's `call` is shadowed by a recording wrapper, which is then
removed again.

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

import keras
import numpy as np

from keras_distill._keras_internals import ATTENTION_METHOD
from keras_distill._keras_internals import attention_scores_call
from keras_distill._keras_internals import check_attention_scores_available
from keras_distill._keras_internals import child_layers

ATTENTION = ":attention"


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
    layer = model
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
    return layer


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
        self.layers = {}
        self._methods = {}
        for path in dict.fromkeys(paths):
            if path.endswith(ATTENTION):
                layer = attention_layer(model, path[: -len(ATTENTION)], role)
                check_attention_scores_available(layer, path, role)
                self._methods[path] = (ATTENTION_METHOD, _attention_recorder)
            else:
                layer = find_layer(model, path, role)
                self._methods[path] = ("call", _recorder)
            self.layers[path] = layer

    def __call__(self, inputs, training=None):
        with self._recording() as features:
            outputs = self.model(inputs, training=training)
        missing = [path for path in self.layers if path not in features]
        if missing:
            raise ValueError(
                f"The {self.role}'s layers {missing} did not run in its "
                "forward pass, so there is nothing to distil from them."
            )
        return outputs, features

    @contextlib.contextmanager
    def _recording(self):
        features = {}
        shadowed = []
        try:
            for path, layer in self.layers.items():
                method, make_recorder = self._methods[path]
                if method in vars(layer):
                    raise ValueError(
                        f"The {self.role}'s layer {path!r} is tapped twice at "
                        "once (is the same layer object tapped in the teacher "
                        "and the student?)."
                    )
                original = getattr(layer, method)
                vars(layer)[method] = make_recorder(original, path, features, self.role)
                shadowed.append((layer, method))
            yield features
        finally:
            for layer, method in shadowed:
                vars(layer).pop(method, None)

    def feature_shapes(self):
        """`{path: shape}` of the tapped features, batch axis `None`.

        Runs the model on a batch of one zero sample, shaped like its
        symbolic inputs (Functional and Sequential models) or like the input
        it was built with. Input axes of unknown size (a variable sequence
        length) are probed at sizes 2 and 3; feature axes that follow them
        are reported as `None`.
        """
        if not self.layers:
            return {}
        specs = self._input_specs()
        sizes = (2, 3) if _has_unknown_axes(specs) else (None,)
        probes = [self(_zeros(specs, size), training=False)[1] for size in sizes]
        return {
            path: _shapes([probe[path] for probe in probes]) for path in probes[0]
        }

    def _input_specs(self):
        """The model's inputs as a structure of `(shape, dtype)` pairs."""
        inputs = symbolic_inputs(self.model)
        if inputs is not None:
            return keras.tree.map_structure(
                lambda x: (tuple(x.shape), x.dtype), inputs
            )
        build_config = self.model.get_build_config() or {}
        if "input_shape" not in build_config:
            raise ValueError(
                f"Cannot infer the shapes of the {self.role}'s tapped "
                "features: build the model by calling it on a batch first."
            )
        return keras.tree.map_shape_structure(
            lambda shape: (tuple(shape), "float32"), build_config["input_shape"]
        )


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


def _is_spec(x):
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)


def _has_unknown_axes(specs):
    if _is_spec(specs):
        return None in specs[0][1:]
    values = specs.values() if isinstance(specs, dict) else specs
    return any(_has_unknown_axes(v) for v in values)


def _zeros(specs, size):
    """A batch of one zero sample; axes of unknown length get `size`."""
    if _is_spec(specs):
        shape, dtype = specs
        return np.zeros((1, *(size if d is None else d for d in shape[1:])), dtype)
    if isinstance(specs, dict):
        return {k: _zeros(v, size) for k, v in specs.items()}
    return [_zeros(v, size) for v in specs]


def _shapes(probes):
    """The shape(s) of one feature seen in several probes, batch axis `None`.

    Axes of the same size in every probe keep it; the others are `None`.
    """
    first = probes[0]
    if isinstance(first, dict):
        return {key: _shapes([p[key] for p in probes]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_shapes(list(items)) for items in zip(*probes))
    axes = zip(*(tuple(p.shape)[1:] for p in probes))
    return (None, *(a[0] if len(set(a)) == 1 else None for a in axes))


def attention_layer(model, path, role="model"):
    """The `MultiHeadAttention` at `path`, or the only one inside that layer.

    Raises:
        ValueError: when the layer at `path` holds no attention layer or
            several (naming their paths).
    """
    layer = find_layer(model, path, role)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return layer
    inner = [
        p for p in layer_paths(layer)
        if isinstance(find_layer(layer, p), keras.layers.MultiHeadAttention)
    ]
    if len(inner) != 1:
        found = f"several: {[f'{path}/{p}' for p in inner]}" if inner else "none"
        raise ValueError(
            f"The {role}'s layer {path!r} should be a "
            "keras.layers.MultiHeadAttention or contain exactly one, to tap "
            f"its attention scores; it contains {found}. Name the attention "
            "layer's own path."
        )
    return find_layer(layer, inner[0])


def record_once(features, path, value, role):
    """Stores `value` as the feature at `path`, refusing a second value."""
    if path in features:
        raise ValueError(
            f"The {role}'s layer {path!r} runs more than once per forward "
            "pass (a shared layer), so its output is ambiguous. Tap a layer "
            "that runs once."
        )
    features[path] = value


def _recorder(call, path, features, role):
    def recording_call(*args, **kwargs):
        outputs = call(*args, **kwargs)
        record_once(features, path, outputs, role)
        return outputs

    return recording_call


def _attention_recorder(compute_attention, path, features, role):
    def record(scores, mask):
        value = {"scores": scores}
        if mask is not None:
            value["mask"] = mask
        record_once(features, path, value, role)

    return attention_scores_call(compute_attention, record)
