"""The one place where keras-distill reaches into Keras's private modules.

Rules: everything else in the package uses the public `keras` and `keras.ops`
API only. When Keras exposes a public equivalent of something here, switch to
it and delete the private import. Each helper falls back to a behaviour that
is correct for tensors Keras has not annotated.
"""

from keras import ops

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


# `MultiHeadAttention._compute_attention` is the documented hook for custom
# attention ("Users can override this function"); shadowing it per instance
# is how taps read the attention probabilities.
ATTENTION_METHOD = "_compute_attention"


def check_attention_scores_available(layer, path, role):
    """Raises if the attention layer at `path` cannot return its scores."""
    if getattr(layer, "_flash_attention", False):
        raise ValueError(
            f"The {role}'s attention layer {path!r} uses flash attention, "
            "which never forms the attention scores. Build it with "
            "`flash_attention=False` (or call "
            "`keras.config.disable_flash_attention()` before building it) to "
            "distil its attention."
        )


def attention_scores_call(compute_attention, record):
    """Wraps a `_compute_attention` so that it also records its scores.

    Args:
        compute_attention: the layer's bound `_compute_attention`.
        record: called with the attention probabilities `(B, N, T, S)` and
            the boolean mask the layer applied (broadcastable to
            `(B, T, S)`), or `None` when it applied none.

    Returns:
        A function with `_compute_attention`'s signature, whose output is the
        layer's own. When the layer ran a fused kernel, which never forms
        the probabilities, they are formed by Keras's explicit path in a
        second call (fused and explicit paths can differ on queries that
        attend to nothing, so the output is not taken from that call).
    """

    def recording(
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        **kwargs,
    ):
        args = (query, key, value, attention_mask, training)
        output, scores = compute_attention(*args, return_attention_scores, **kwargs)
        if scores is None:
            _, scores = compute_attention(*args, True, **kwargs)
        mask = attention_mask
        if kwargs.get("use_causal_mask") and mask is None:
            length_q, length_k = ops.shape(query)[1], ops.shape(key)[1]
            mask = ops.cast(ops.tril(ops.ones((length_q, length_k))), "bool")
        record(scores, mask)
        return output, scores

    return recording


# Under `tf.distribute` (TensorFlow), each replica's gradients are summed, so
# Keras divides each replica's loss by the number of replicas: its compiled
# loss comes scaled so, and `train_step` unscales the value it logs. A model
# overriding `compute_loss` returns its total scaled the same way. Both are
# the identity on one replica and on the other backends, whose data-parallel
# steps (`keras.distribution`, DistributedDataParallel) average instead.
try:
    from keras.src.losses.loss import scale_loss_for_distribution
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # pragma: no cover - depends on the installed Keras

    def scale_loss_for_distribution(value):
        return value

    def unscale_loss_for_distribution(value):
        return value
