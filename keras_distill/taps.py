"""Taps: outputs of inner layers, captured during a model's own forward pass.

A `LayerTaps` finds layers by name or by path into nested models and layers
(`"backbone/transformer_layer_2"`), in Sequential, Functional and subclassed
models alike, and records what they return while the model runs. The model
runs once and returns its usual outputs; the features come from that same
pass. Nothing about the model changes: for the duration of one forward pass
each tapped layer's `call` is shadowed by a recording wrapper, which is then
removed again.
"""

import contextlib

import keras
import numpy as np

from keras_distill._keras_internals import child_layers


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
        self.layers = {
            path: find_layer(model, path, role) for path in dict.fromkeys(paths)
        }

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
        for path, layer in self.layers.items():
            if "call" in vars(layer):
                raise ValueError(
                    f"The {self.role}'s layer {path!r} is tapped twice at once "
                    "(is the same layer object tapped in the teacher and the "
                    "student?)."
                )
            vars(layer)["call"] = _recorder(layer.call, path, features, self.role)
        try:
            yield features
        finally:
            for layer in self.layers.values():
                vars(layer).pop("call", None)

    def feature_shapes(self):
        """`{path: shape}` of the tapped features, batch axis `None`.

        Runs the model once on a batch of one zero sample, shaped like its
        symbolic inputs (Functional and Sequential models) or like the input
        it was built with.
        """
        if not self.layers:
            return {}
        if getattr(self.model, "inputs", None):
            specs = [(tuple(x.shape), x.dtype) for x in self.model.inputs]
            structure = specs[0] if len(specs) == 1 else specs
        else:
            build_config = self.model.get_build_config() or {}
            if "input_shape" not in build_config:
                raise ValueError(
                    f"Cannot infer the shapes of the {self.role}'s tapped "
                    "features: build the model by calling it on a batch "
                    "first."
                )
            structure = keras.tree.map_shape_structure(
                lambda shape: (tuple(shape), "float32"),
                build_config["input_shape"],
            )
        _, features = self(_zeros(structure), training=False)
        return {
            path: (None, *tuple(feature.shape)[1:])
            for path, feature in features.items()
        }


def _zeros(structure):
    """A batch of one zero sample for `(shape, dtype)` leaves."""
    if isinstance(structure, tuple) and len(structure) == 2 and isinstance(
        structure[1], str
    ):
        shape, dtype = structure
        return np.zeros((1, *shape[1:]), dtype)
    if isinstance(structure, dict):
        return {k: _zeros(v) for k, v in structure.items()}
    return [_zeros(v) for v in structure]


def _recorder(call, path, features, role):
    def recording_call(*args, **kwargs):
        outputs = call(*args, **kwargs)
        if path in features:
            raise ValueError(
                f"The {role}'s layer {path!r} runs more than once per forward "
                "pass (a shared layer), so its output is ambiguous. Tap a "
                "layer that runs once."
            )
        features[path] = outputs
        return outputs

    return recording_call
