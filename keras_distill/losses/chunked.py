"""Token distillation from hidden states, in chunks over the tokens.

A language model's logits are `(B, L, V)`: at a vocabulary of 256k and
8,192 tokens one float32 copy is 8 GiB, and a KD step through full logits
keeps several (both models' logits, their log-softmax, the gradient).
`chunked_token_distillation` never forms them. It takes each model's final
hidden states and output head and computes, one chunk of tokens at a
time, the head's logits, the divergence at the temperature, the
next-token cross-entropy, and their gradients, which it accumulates in
the forward pass (Liger-Kernel's fused-linear approach). The backward pass
then only scales the stored gradients, so it keeps no chunk's logits. The
teacher's tensors get zero gradients: the teacher does not learn.
"""

import math

from keras import ops

from keras_distill.losses.response import _kl
from keras_distill.losses.response import check_divergence

HEAD_LAYOUTS = ("dense", "embedding")


def _logits(hidden, kernel, bias, layout, soft_cap):
    """A head's float32 logits of `hidden` `(N, H)`: `hidden @ kernel`
    (`"dense"`, kernel `(H, V)`) or `hidden @ kernel.T` (`"embedding"`,
    tied token embeddings `(V, H)`), plus `bias`, then `soft_cap *
    tanh(logits / soft_cap)` (Gemma's final soft-cap) when given."""
    kernel = ops.cast(kernel, "float32")
    if layout == "embedding":
        kernel = ops.transpose(kernel)
    logits = ops.matmul(ops.cast(hidden, "float32"), kernel)
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    if soft_cap:
        logits = soft_cap * ops.tanh(logits / soft_cap)
    return logits


def _divergence_and_gradient(teacher_logits, student_logits, temperature, divergence):
    """Per token: `T^2 D(p, q)` as `keras_distill.losses.kd` defines it, with
    p and q the softmax of the logits over T, and its gradient with respect
    to the student's logits.

    For q = softmax(z / T), the gradient of any D(q) is
    `q * (g - sum(q * g)) / T` with g = dD/dq: forward KL gives `q - p`
    (over T), reverse KL `q * (log q - log p - D)`, JS
    `q * (g - sum(q * g))` with g = log(q / m) / 2, m = (p + q) / 2.
    """
    log_p = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_q = ops.log_softmax(student_logits / temperature, axis=-1)
    p, q = ops.exp(log_p), ops.exp(log_q)
    if divergence == "forward":
        value = _kl(log_p, log_q)
        gradient = q - p
    elif divergence == "reverse":
        value = _kl(log_q, log_p)
        gradient = q * (log_q - log_p - value[:, None])
    else:
        log_m = ops.logaddexp(log_p, log_q) - math.log(2.0)
        value = 0.5 * (_kl(log_p, log_m) + _kl(log_q, log_m))
        g = 0.5 * (log_q - log_m)
        gradient = q * (g - ops.sum(q * g, axis=-1, keepdims=True))
    square = temperature * temperature
    return value * square, gradient * temperature  # T^2 / T


def _cross_entropy_and_gradient(logits, labels):
    """Per token: the cross-entropy of integer `labels` (any value outside
    `[0, V)` counts as 0: the caller masks those tokens), and its gradient
    with respect to the logits."""
    vocabulary = logits.shape[-1]
    one_hot = ops.one_hot(ops.clip(labels, 0, vocabulary - 1), vocabulary)
    log_q = ops.log_softmax(logits, axis=-1)
    value = -ops.sum(one_hot * log_q, axis=-1)
    return value, ops.exp(log_q) - one_hot


def chunked_token_distillation(
    teacher_hidden,
    student_hidden,
    teacher_kernel,
    student_kernel,
    labels=None,
    mask=None,
    temperature=1.0,
    divergence="forward",
    distillation_weight=1.0,
    label_weight=0.0,
    teacher_bias=None,
    student_bias=None,
    teacher_layout="dense",
    student_layout="dense",
    teacher_soft_cap=None,
    student_soft_cap=None,
    chunk_size=1024,
):
    """Token-level KD and next-token cross-entropy, without the full logits.

    The loss is `distillation_weight * KD + label_weight * CE`, each the
    mean over the valid tokens (those where `mask` is true, across the
    whole batch: not a mean of per-chunk means), where KD is the divergence
    `keras_distill.losses.kd` computes on the two heads' logits and CE the
    student's cross-entropy of `labels`. Value and gradients equal those of
    the same computation on full logits; the teacher gets no gradient.

    Args:
        teacher_hidden: the teacher's final hidden states `(B, L, Ht)`
            (or `(N, Ht)`).
        student_hidden: the student's, `(B, L, Hs)`.
        teacher_kernel: the teacher head's kernel: `(Ht, V)` for a
            `"dense"` head, the token embeddings `(V, Ht)` for a tied
            `"embedding"` head.
        student_kernel: the student head's kernel, likewise.
        labels: integer next-token labels `(B, L)`, needed when
            `label_weight` is not 0. Defaults to `None`.
        mask: which tokens count, `(B, L)` (padding, prompt tokens and
            ignored labels are false). Defaults to `None`: all tokens.
        temperature: the softmax temperature T > 0 of KD, applied inside
            the chunks; the loss is scaled by T^2. Defaults to 1.
        divergence: `"forward"`, `"reverse"` or `"js"`, as in
            `keras_distill.losses.kd`. Defaults to `"forward"`.
        distillation_weight: the weight of KD. Defaults to 1.
        label_weight: the weight of CE. Defaults to 0.
        teacher_bias: the teacher head's bias `(V,)`, or `None`.
        student_bias: the student head's bias, or `None`.
        teacher_layout: `"dense"` or `"embedding"`. Defaults to `"dense"`.
        student_layout: likewise. Defaults to `"dense"`.
        teacher_soft_cap: the teacher's final logit soft-cap c (logits
            become `c * tanh(logits / c)`), or `None`.
        student_soft_cap: the student's, or `None`.
        chunk_size: tokens per chunk: each step of the loop forms one
            `(chunk_size, V)` block of logits per model. Defaults to 1024.

    Returns:
        A pair `(loss, logs)`: the float32 scalar loss, and a dict of the
        unweighted `"kd"` and `"cross_entropy"` means for the logs (under
        `stop_gradient`: the gradient flows through `loss`).

    Example:

    ```python
    loss, logs = keras_distill.losses.chunked_token_distillation(
        teacher_hidden, student_hidden,
        teacher_head.kernel, student_head.kernel,
        labels=next_tokens, mask=next_tokens != pad_id,
        temperature=2.0, label_weight=0.5, distillation_weight=0.5,
    )
    ```

    Reference:
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM
        Training", 2024 (the fused linear losses, gradients computed in
        the forward pass).
    """
    check_divergence(divergence)
    for layout in (teacher_layout, student_layout):
        if layout not in HEAD_LAYOUTS:
            raise ValueError(f"Unknown head layout {layout!r}; use one of {HEAD_LAYOUTS}.")
    if label_weight and labels is None:
        raise ValueError(
            "chunked_token_distillation: label_weight is not 0 but no labels "
            "were given; pass labels=, the next-token ids, or label_weight=0."
        )
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a whole number >= 1; received {chunk_size!r}.")
    width_t, width_s = teacher_hidden.shape[-1], student_hidden.shape[-1]
    teacher_hidden = ops.reshape(teacher_hidden, (-1, width_t))
    student_hidden = ops.reshape(student_hidden, (-1, width_s))
    student_kernel = ops.convert_to_tensor(student_kernel)
    teacher_kernel = ops.convert_to_tensor(teacher_kernel)
    student_bias, teacher_bias = (
        None if b is None else ops.convert_to_tensor(b) for b in (student_bias, teacher_bias)
    )
    tokens = student_hidden.shape[0]
    if mask is None:
        mask = ops.ones((tokens,), "float32")
    mask = ops.cast(ops.reshape(mask, (-1,)), "float32")
    labels = ops.zeros((tokens,), "int32") if labels is None else ops.reshape(labels, (-1,))
    # Every tensor is an argument of the custom-gradient function (JAX
    # refuses tensors closed over); the labels travel as float32, exact for
    # vocabularies below 2^24 tokens.
    inputs = {
        "student_hidden": student_hidden, "student_kernel": student_kernel,
        "student_bias": student_bias, "teacher_hidden": teacher_hidden,
        "teacher_kernel": teacher_kernel, "teacher_bias": teacher_bias,
        "mask": mask, "labels": ops.cast(labels, "float32"),
    }
    names = [name for name, value in inputs.items() if value is not None]

    def forward(*values):
        given = dict.fromkeys(inputs)
        given.update(zip(names, values))
        student_hidden, student_kernel = given["student_hidden"], given["student_kernel"]
        mask, labels = given["mask"], ops.cast(given["labels"], "int32")
        count = ops.maximum(ops.sum(mask), 1.0)
        kd_total = ce_total = 0.0
        hidden_gradients = []
        kernel_gradient = ops.zeros(student_kernel.shape, "float32")
        vocabulary = student_kernel.shape[0 if student_layout == "embedding" else 1]
        bias_gradient = ops.zeros((vocabulary,), "float32")
        for start in range(0, tokens, chunk_size):
            stop = min(start + chunk_size, tokens)
            h = ops.cast(student_hidden[start:stop], "float32")
            weights = mask[start:stop] / count
            teacher = _logits(
                given["teacher_hidden"][start:stop], given["teacher_kernel"],
                given["teacher_bias"], teacher_layout, teacher_soft_cap,
            )
            student = _logits(
                h, student_kernel, given["student_bias"], student_layout, student_soft_cap
            )
            kd, d_kd = _divergence_and_gradient(teacher, student, temperature, divergence)
            ce, d_ce = _cross_entropy_and_gradient(student, labels[start:stop])
            kd_total = kd_total + ops.sum(kd * weights)
            ce_total = ce_total + ops.sum(ce * weights)
            d_logits = (distillation_weight * d_kd + label_weight * d_ce) * weights[:, None]
            if student_soft_cap:
                d_logits = d_logits * (1.0 - ops.square(student / student_soft_cap))
            kernel = ops.cast(student_kernel, "float32")
            if student_layout == "embedding":
                hidden_gradients.append(ops.matmul(d_logits, kernel))
                kernel_gradient = kernel_gradient + ops.matmul(ops.transpose(d_logits), h)
            else:
                hidden_gradients.append(ops.matmul(d_logits, ops.transpose(kernel)))
                kernel_gradient = kernel_gradient + ops.matmul(ops.transpose(h), d_logits)
            bias_gradient = bias_gradient + ops.sum(d_logits, axis=0)
        loss = distillation_weight * kd_total + label_weight * ce_total
        hidden_gradient = ops.concatenate(hidden_gradients, axis=0)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            scale = upstream[0]
            student = {
                "student_hidden": hidden_gradient, "student_kernel": kernel_gradient,
                "student_bias": bias_gradient,
            }
            # The teacher, the mask and the labels get zeros.
            return tuple(
                ops.cast(student[name] * scale, given[name].dtype) if name in student
                else ops.zeros_like(given[name])
                for name in names
            )

        return ops.stack([loss, kd_total, ce_total]), gradient

    values = ops.custom_gradient(forward)(*(inputs[name] for name in names))
    logs = {"kd": ops.stop_gradient(values[1]), "cross_entropy": ops.stop_gradient(values[2])}
    return values[0], logs
