"""Attention-based distillation: where the networks look, not what they see."""

import keras
from keras import ops

from keras_distill.losses.feature import LayerPairLoss


def spatial_attention(feature_map, p=2.0):
    """Activation-based spatial attention map of a channels-last feature map.

    Args:
        feature_map: a tensor `(B, H, W, C)` (or `(B, L, C)`).
        p: the exponent of `|F|^p`. Defaults to 2.

    Returns:
        The channel-wise mean of `|F|^p`, shape `(B, H, W)` (or `(B, L)`).
    """
    f = ops.cast(feature_map, "float32")
    return ops.mean(ops.power(ops.abs(f), p), axis=-1)


def _pool_to(attention, size):
    """Average-pools an attention map `(B, H, W)` down to `size = (h, w)`."""
    h, w = attention.shape[1:]
    if (h, w) == tuple(size):
        return attention
    if h % size[0] or w % size[1]:
        raise ValueError(
            f"AttentionTransfer pools the larger attention map to the smaller "
            f"one, which needs whole factors; got {(h, w)} and {tuple(size)}. "
            "Pair layers whose spatial sizes divide each other."
        )
    kh, kw = h // size[0], w // size[1]
    pooled = ops.reshape(attention, (-1, size[0], kh, size[1], kw))
    return ops.mean(pooled, axis=(2, 4))


def attention_transfer(teacher_map, student_map, p=2.0, mask=None):
    """Attention transfer between two feature maps, per sample.

    `a(F)` is the channel-wise mean of `|F|^p`, flattened and L2-normalised;
    the loss is the mean over positions of `(a(F_s) - a(F_t))^2`. When the
    spatial sizes differ, the larger attention map is average-pooled to the
    smaller (mean over channels and average pooling commute, so this is the
    attention of the pooled `|F|^p`). Channel counts may differ.

    Args:
        teacher_map: teacher features `(B, H, W, C_t)`.
        student_map: student features `(B, h, w, C_s)`.
        p: the exponent. Defaults to 2 (the paper's choice).
        mask: for sequences `(B, L, C)`, an optional boolean mask `(B, L)`;
            padded positions are left out of both attention maps. Defaults
            to `None`.

    Returns:
        A float32 tensor of shape `(B,)`.

    Reference:
        Zagoruyko and Komodakis, "Paying More Attention to Attention",
        ICLR 2017.
    """
    a_t, a_s = spatial_attention(teacher_map, p), spatial_attention(student_map, p)
    if mask is not None and len(a_t.shape) == 2:
        mask = ops.cast(mask, "float32")
        a_t, a_s = a_t * mask, a_s * mask
    if len(a_t.shape) == 3:
        (h_t, w_t), (h_s, w_s) = a_t.shape[1:], a_s.shape[1:]
        if h_t * w_t > h_s * w_s:
            a_t = _pool_to(a_t, (h_s, w_s))
        else:
            a_s = _pool_to(a_s, (h_t, w_t))

    def normalised(a):
        a = ops.reshape(a, (ops.shape(a)[0], -1))
        return a / ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1, keepdims=True), 1e-24))

    return ops.mean(ops.square(normalised(a_s) - normalised(a_t)), axis=-1)


@keras.saving.register_keras_serializable(package="keras_distill")
class AttentionTransfer(LayerPairLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017) over layer pairs.

    For each (teacher layer, student layer) pair, matches the normalised
    spatial attention maps (`keras_distill.losses.attention_transfer`), and
    sums over pairs. The paper weighs the loss by beta = 1000 / 2 relative to
    the label loss: pass such a weight in `distillation_loss_weights`.

    Args:
        teacher_layers: teacher layer name(s) of channels-last feature maps.
        student_layers: the matching student layer name(s).
        p: the exponent of `|F|^p`. Defaults to 2.
        input_mask: for sequence features, the key of a dict input holding a
            boolean mask of real positions. Defaults to `None`: the features'
            own Keras mask, if any.
        name: the loss's name in the logs. Defaults to
            `"attention_transfer"`.

    Example:

    ```python
    at = keras_distill.losses.AttentionTransfer(
        teacher_layers=["block1", "block2"], student_layers=["conv1", "conv2"]
    )
    distiller = keras_distill.Distiller(
        teacher, student, [KD(4.0), at], distillation_loss_weights=[0.9, 500.0]
    )
    ```

    Reference:
        Zagoruyko and Komodakis, "Paying More Attention to Attention",
        ICLR 2017.
    """

    def __init__(
        self,
        teacher_layers,
        student_layers,
        p=2.0,
        input_mask=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            teacher_layers, student_layers, input_mask=input_mask, name=name, **kwargs
        )
        self.p = float(p)
        if self.p <= 0:
            raise ValueError(f"AttentionTransfer: `p` must be > 0; received {p}.")

    def validate_outputs(self, teacher_outputs, student_outputs):
        if len(teacher_outputs.shape) != len(student_outputs.shape) or len(
            teacher_outputs.shape
        ) not in (3, 4):
            raise ValueError(
                "AttentionTransfer compares channels-last feature maps "
                "(B, H, W, C) or sequences (B, L, C) of the same rank; got "
                f"shapes {tuple(teacher_outputs.shape)} and "
                f"{tuple(student_outputs.shape)}."
            )
        t_len, s_len = teacher_outputs.shape[1], student_outputs.shape[1]
        if len(teacher_outputs.shape) == 3 and None not in (t_len, s_len) and (
            t_len != s_len
        ):
            raise ValueError(
                "AttentionTransfer on sequences needs equal lengths; got "
                f"{t_len} (teacher) and {s_len} (student)."
            )

    def per_sample(self, teacher, student, mask=None):
        return attention_transfer(teacher, student, self.p, mask)

    def get_config(self):
        return {**super().get_config(), "p": self.p}
