"""Sources: which tensor of a model's forward pass a distillation loss reads.

Every loss says what it compares with two arguments, `teacher=` and
`student=`, the first two of its constructor. Each is a source, or a
shorthand for one:

- `None`, or `Output()`: the model's output (its only one);
- `Output("logits")`, `Output(1)`: one output of a multi-output model, by
  dict key or list index;
- `"block3"`, `"backbone/transformer_layer_2"`, or `Layer(path)`: what the
  layer at that path returns, in the model's own forward pass;
- `"encoder/layer_1:attention"`, or `Attention(path)`: the attention
  probabilities of the `keras.layers.MultiHeadAttention` at that path (or
  of the one inside that layer);
- `AllOutputs()`: every output, in the model's structure; `Group(...)`:
  several sources read together, as a dict.

A list of sources pairs teacher and student tensors one to one (FitNets
hints on several layers); the loss adds the pairs' values. A new kind of
tensor (a final hidden state with its output head, a generated sequence) is
a new `Source` subclass: what it needs from the model (`tap_paths`) and how
it reads it from a `ForwardPass` (`read`).
"""

import keras

from keras_distill.taps import ATTENTION


class Source:
    """Base class of sources: a tensor read from one model's forward pass."""

    def tap_paths(self):
        """The layer paths the model's taps must record for this source."""
        return ()

    def read(self, forward_pass):
        """This source's tensor in `forward_pass` (a `ForwardPass`)."""
        raise NotImplementedError

    def reads_outputs(self):
        """Whether this source is one of the model's outputs."""
        return False

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None  # a value, compared by its config, like a dict

    def __repr__(self):
        args = ", ".join(repr(v) for v in self.get_config().values())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_distill")
class Output(Source):
    """One of the model's outputs.

    Args:
        key: a dict key or list index of a multi-output model's outputs;
            `None` for a model's only output. Defaults to `None`.
    """

    def __init__(self, key=None):
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
            raise TypeError(
                f"Output(key) takes a dict key (str), a list index (int) or "
                f"None; received {key!r}."
            )
        self.key = key

    def reads_outputs(self):
        return True

    def read(self, forward_pass):
        return select_output(forward_pass.outputs, self.key)

    def get_config(self):
        return {"key": self.key}


@keras.saving.register_keras_serializable(package="keras_distill")
class AllOutputs(Source):
    """All of the model's outputs, in the structure the model returns them.

    For losses that map a structure of Keras losses over a multi-output
    model's outputs (`LogitsDistillation`, `FeatureDistillation`).
    """

    def reads_outputs(self):
        return True

    def read(self, forward_pass):
        return forward_pass.outputs


@keras.saving.register_keras_serializable(package="keras_distill")
class Layer(Source):
    """What the layer at `path` returns in the model's forward pass.

    Args:
        path: a layer name, or names joined by `"/"` into nested models and
            layers (`"backbone/transformer_layer_2"`).
    """

    def __init__(self, path):
        if not isinstance(path, str) or not path:
            raise TypeError(f"Layer(path) takes a layer path (str); received {path!r}.")
        if path.endswith(ATTENTION):
            raise ValueError(
                f"{path!r} names attention probabilities: use "
                f"Attention({path[: -len(ATTENTION)]!r})."
            )
        self.path = path

    def tap_paths(self):
        return (self.path,)

    def read(self, forward_pass):
        return forward_pass.features[self.path]

    def get_config(self):
        return {"path": self.path}


@keras.saving.register_keras_serializable(package="keras_distill")
class Attention(Source):
    """The attention probabilities of an attention layer.

    Read as a dict `{"scores": (B, heads, T, S)}`, with `"mask"` (boolean,
    broadcastable to `(B, T, S)`) where the layer masks attention.

    Args:
        path: the path of a `keras.layers.MultiHeadAttention`, or of a layer
            holding exactly one (a keras-hub transformer layer).
    """

    def __init__(self, path):
        if not isinstance(path, str) or not path:
            raise TypeError(
                f"Attention(path) takes a layer path (str); received {path!r}."
            )
        self.path = path[: -len(ATTENTION)] if path.endswith(ATTENTION) else path

    def tap_paths(self):
        return (self.path + ATTENTION,)

    def read(self, forward_pass):
        return forward_pass.features[self.path + ATTENTION]

    def get_config(self):
        return {"path": self.path}


@keras.saving.register_keras_serializable(package="keras_distill")
class Group(Source):
    """Several sources read together, as a dict of their tensors.

    For losses that compare more than one tensor of each layer pair (a
    transformer layer's attention probabilities and its hidden states).

    Args:
        **named: the sources (or shorthands), by the keys of the dict read.
    """

    def __init__(self, **named):
        if not named:
            raise ValueError("Group needs at least one named source.")
        self.named = {key: get(spec) for key, spec in named.items()}

    def tap_paths(self):
        return tuple(p for source in self.named.values() for p in source.tap_paths())

    def reads_outputs(self):
        return all(source.reads_outputs() for source in self.named.values())

    def read(self, forward_pass):
        return {key: source.read(forward_pass) for key, source in self.named.items()}

    def get_config(self):
        return {
            key: keras.saving.serialize_keras_object(source)
            for key, source in self.named.items()
        }


def get(spec, role="teacher", owner="the loss"):
    """The `Source` that `spec` stands for.

    Args:
        spec: a `Source`; `None` (the model's output); a layer path (str),
            ending in `":attention"` for attention probabilities; or a
            `get_config` dict of a source.
        role: `"teacher"` or `"student"`, for errors.
        owner: what to call the loss in errors.

    Returns:
        A `Source`.

    Raises:
        TypeError: for anything else, naming the accepted forms.
    """
    if isinstance(spec, Source):
        return spec
    if spec is None:
        return Output()
    if isinstance(spec, str):
        return Attention(spec) if spec.endswith(ATTENTION) else Layer(spec)
    if isinstance(spec, dict) and "class_name" in spec:
        return keras.saving.deserialize_keras_object(spec)
    raise TypeError(
        f"{owner}: `{role}=` says which tensor of the {role} the loss reads: "
        "None (the model's output), a layer path such as 'block3', "
        "keras_distill.sources.Output(key) for one output of several, or "
        f"Attention(path); received {spec!r}. Hyperparameters are keyword "
        "arguments, e.g. KD(temperature=4.0)."
    )


def get_list(spec, role="teacher", owner="the loss"):
    """`spec` as a list of sources: one, or a list of them (layer pairs)."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{owner}: `{role}=` is an empty list; name a source.")
        return [get(s, role, owner) for s in spec]
    return [get(spec, role, owner)]


def select_output(outputs, key):
    """The output `key` of a model's `outputs` (its only one for `None`).

    Raises:
        ValueError: when the model has several outputs and `key` is `None`,
            or `key` names none of them.
    """
    if key is None:
        flat = keras.tree.flatten(outputs)
        if len(flat) == 1:
            return flat[0]
        names = list(outputs) if isinstance(outputs, dict) else list(range(len(flat)))
        raise ValueError(
            f"A model has {len(flat)} outputs ({names}); say which to distil "
            "with an Output source for that model, e.g. teacher=keras_distill"
            f".sources.Output({names[0]!r}) when the teacher has several and "
            "the student one (a model with one output needs no key), or "
            f"teacher=Output({names[0]!r}), student=Output({names[0]!r}) when "
            "both have several."
        )
    try:
        if not isinstance(outputs, (dict, list, tuple)):
            raise TypeError("a single tensor has no named outputs")
        return outputs[key]
    except (KeyError, IndexError, TypeError):
        available = (
            list(outputs)
            if isinstance(outputs, dict)
            else list(range(len(outputs)))
            if isinstance(outputs, (list, tuple))
            else "a single tensor"
        )
        hint = (
            " A model with one output needs no key: leave its source None "
            "(e.g. KD(teacher=Output(0)) for a two-output teacher and a "
            "one-output student)."
            if available == "a single tensor" else ""
        )
        raise ValueError(
            f"Output({key!r}) names no output of the model; available: "
            f"{available}.{hint}"
        ) from None
