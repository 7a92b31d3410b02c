"""A gradient-reversal layer in `keras.ops`: identity forward, -scale backward.

Ganin and Lempitsky (2015) train a min-max game with one objective and one
optimizer: the parameters behind a reversal layer ascend the loss that the
others descend. `stop_gradient(x) + (-scale) * (x - stop_gradient(x))` is
`x` exactly in value (`x - stop_gradient(x)` is exactly 0), and its
gradient is `-scale`: no custom gradient, so the same on every backend.
"""

from keras import ops


def gradient_reversal(x, scale=1.0):
    """`x`, with the gradient flowing back through it multiplied by `-scale`.

    Args:
        x: a tensor.
        scale: how strongly the gradient is reversed, a number or scalar
            tensor (0: no gradient reaches `x`; 1: the gradient's sign is
            flipped). Defaults to 1.

    Returns:
        A tensor equal to `x`.

    Example:

    >>> x = keras.ops.ones(3)
    >>> keras.ops.convert_to_numpy(gradient_reversal(x, 0.5))
    array([1., 1., 1.], dtype=float32)

    Reference:
        Ganin and Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015.
    """
    x = ops.convert_to_tensor(x)
    held = ops.stop_gradient(x)
    return held + ops.cast(-scale, x.dtype) * (x - held)
