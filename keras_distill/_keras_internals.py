"""The one place where keras-distill reaches into Keras's private modules.

Rules: everything else in the package uses the public `keras` and `keras.ops`
API only. When Keras exposes a public equivalent of something here, switch to
it and delete the private import. Each helper falls back to a behaviour that
is correct for tensors Keras has not annotated.
"""

try:  # Keras 3.x keeps padding masks as a tensor attribute (a side table on JAX).
    from keras.src.backend.common.masking import get_keras_mask as _get_mask
except ImportError:  # pragma: no cover - depends on the installed Keras
    _get_mask = None


def get_keras_mask(x):
    """Returns the padding mask Keras attached to tensor `x`, or `None`.

    Args:
        x: a tensor produced by a Keras layer or model.

    Returns:
        A boolean tensor of shape `x.shape[:-1]` when a layer such as
        `Embedding(mask_zero=True)` or `Masking` set a mask, else `None`.
    """
    if _get_mask is None:  # pragma: no cover
        return getattr(x, "_keras_mask", None)
    return _get_mask(x)


def child_layers(layer):
    """The layers directly inside `layer` (a model or a composite layer).

    Keras tracks sublayers of every layer, but only models expose them
    publicly (`Model.layers`); composite layers such as a keras-hub
    `TransformerEncoder` do not.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))
