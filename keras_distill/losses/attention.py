"""Attention-based distillation: where the networks look, not what they see."""

import keras
from keras import ops

from keras_distill import sources
from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.base import PerSampleLoss
from keras_distill.losses.base import _deprecated_sources
from keras_distill.losses.base import weighted_mean
from keras_distill.losses.feature import FitNet


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
class AttentionTransfer(PerSampleLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017) over layer pairs.

    For each (teacher layer, student layer) pair, matches the normalised
    spatial attention maps (`keras_distill.losses.attention_transfer`), and
    sums over pairs. The paper weighs the loss by beta = 1000 / 2 relative to
    the label loss: pass such a weight in `distillation_loss_weights`.

    Args:
        teacher: teacher layer path(s) of channels-last feature maps.
        student: the matching student layer path(s).
        p: the exponent of `|F|^p`. Defaults to 2.
        input_mask: for sequence features, the key of a dict input holding a
            boolean mask of real positions. Defaults to `None`: the features'
            own Keras mask, if any.
        name: the loss's name in the logs. Defaults to
            `"attention_transfer"`.

    Example:

    ```python
    at = keras_distill.losses.AttentionTransfer(
        ["block1", "block2"], ["conv1", "conv2"]
    )
    distiller = keras_distill.Distiller(
        teacher, student, [KD(temperature=4.0), at],
        distillation_loss_weights=[0.9, 500.0],
    )
    ```

    Reference:
        Zagoruyko and Komodakis, "Paying More Attention to Attention",
        ICLR 2017.
    """

    def __init__(
        self, teacher=None, student=None, *, p=2.0, input_mask=None, name=None,
        **kwargs
    ):
        super().__init__(teacher, student, input_mask=input_mask, name=name, **kwargs)
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

    def per_sample(self, context):
        return attention_transfer(context.teacher, context.student, self.p, context.mask)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


def attention_map_loss(teacher_scores, student_scores, loss="mse", mask=None):
    """Divergence between two layers' attention probabilities, per query.

    Args:
        teacher_scores: teacher attention probabilities `(B, N, T, S)`.
        student_scores: student attention probabilities, same shape.
        loss: `"mse"`, the squared difference averaged over heads and
            unmasked keys (TinyBERT), or `"kl"`, `KL(teacher || student)`
            of each query's distribution over keys, averaged over heads
            (MiniLM). Defaults to `"mse"`.
        mask: an optional boolean attention mask broadcastable to
            `(B, T, S)`; masked keys take no part. Defaults to `None`.

    Returns:
        A float32 tensor `(B, T)`, one value per query position.

    References:
        Jiao et al., "TinyBERT: Distilling BERT for Natural Language
        Understanding", Findings of EMNLP 2020. Wang et al., "MiniLM: Deep
        Self-Attention Distillation for Task-Agnostic Compression of
        Pre-Trained Transformers", NeurIPS 2020.
    """
    t = ops.cast(teacher_scores, "float32")
    s = ops.cast(student_scores, "float32")
    keys = None
    if mask is not None:
        keys = ops.cast(mask, "float32") * ops.ones_like(t[:, 0])
        keys = ops.expand_dims(keys, 1)  # over heads
    if loss == "kl":
        eps = 1e-12
        per_key = t * (ops.log(ops.maximum(t, eps)) - ops.log(ops.maximum(s, eps)))
        if keys is not None:
            per_key = per_key * keys
        return ops.mean(ops.sum(per_key, axis=-1), axis=1)
    per_key = ops.square(s - t)
    if keys is None:
        return ops.mean(per_key, axis=(1, 3))
    counts = ops.maximum(ops.sum(keys, axis=-1), 1.0)
    return ops.mean(ops.sum(per_key * keys, axis=-1) / counts, axis=1)


def uniform_layer_map(teacher_count, student_count):
    """Which teacher layer each student layer learns from, TinyBERT-style.

    With `k = teacher_count / student_count`, student layer `i` (counting
    from 1) learns from teacher layer `k * i`: the last student layer from
    the last teacher layer.

    Args:
        teacher_count: the number of teacher layers to choose from.
        student_count: the number of student layers.

    Returns:
        A list of `student_count` teacher indices, counting from 0.

    Raises:
        ValueError: when `teacher_count` is not a multiple of
            `student_count`.
    """
    if student_count < 1 or teacher_count % student_count:
        raise ValueError(
            f"A uniform layer map needs a teacher depth that is a multiple of "
            f"the student's; got {teacher_count} teacher and {student_count} "
            "student layers. Pass `layer_map` as a list of teacher indices, "
            "one per student layer."
        )
    k = teacher_count // student_count
    return [k * (i + 1) - 1 for i in range(student_count)]


def _paths(value, argument):
    paths = [value] if isinstance(value, str) else list(value or [])
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(
            f"TransformerAttention: `{argument}` must be a layer path or a list "
            f"of them; received {value!r}."
        )
    return paths


@keras.saving.register_keras_serializable(package="keras_distill")
class TransformerAttention(DistillationLoss):
    """TinyBERT-style transfer of attention maps and hidden states.

    Each student transformer layer learns from one teacher layer (the layer
    map): its per-head attention probabilities are matched to the teacher's
    (`attention_map_loss`), and its output hidden states, through a learned
    projection, to the teacher layer's output (as in `FitNet`). Works with
    `keras.layers.MultiHeadAttention` and with any layer that contains one,
    such as keras-hub's `TransformerEncoder`; the attention probabilities are
    read during the models' single forward pass. Padded query positions are
    left out (the attention layers' own masks, or `input_mask`), and every
    term honours `sample_weight`.

    Keras attention layers expose probabilities, not the pre-softmax
    scores TinyBERT regresses, so `"mse"` matches probabilities; `"kl"`
    gives MiniLM's divergence between them.

    Args:
        teacher: the teacher's transformer layers (paths), in order. Either
            one per student layer, or all of them, of which the layer map
            picks one per student layer.
        student: the student's transformer layers (paths), in order.
        layer_map: `"uniform"` (student layer `i` learns from teacher layer
            `k * i`, see `uniform_layer_map`) or a list of indices into
            `teacher`, one per student layer. Defaults to `"uniform"`.
        attention_loss: `"mse"` or `"kl"`. Defaults to `"mse"`.
        attention_weight: the weight of the attention term. Defaults to 1.
        hidden_weight: the weight of the hidden-state term; 0 leaves the
            hidden states (and the projections) out. Defaults to 1.
        connector: the hidden-state projection(s), as in `FitNet`. Defaults
            to `"auto"`, a `Dense` to the teacher's width.
        input_mask: the key of a dict input holding a boolean mask of real
            positions (`"padding_mask"` for keras-hub models). Defaults to
            `None`: the attention layers' own masks.
        name: the loss's name in the logs. Defaults to
            `"transformer_attention"`.

    Example:

    ```python
    loss = keras_distill.losses.TransformerAttention(
        [f"backbone/transformer_layer_{i}" for i in range(4)],
        [f"backbone/transformer_layer_{i}" for i in range(2)],
        input_mask="padding_mask",
    )  # student layer 0 <- teacher layer 1, student 1 <- teacher 3
    ```

    Reference:
        Jiao et al., "TinyBERT: Distilling BERT for Natural Language
        Understanding", Findings of EMNLP 2020.
    """

    def __init__(
        self,
        teacher=None,
        student=None,
        *,
        layer_map="uniform",
        attention_loss="mse",
        attention_weight=1.0,
        hidden_weight=1.0,
        connector="auto",
        input_mask=None,
        name=None,
        **kwargs,
    ):
        teacher, student = _deprecated_sources(
            "TransformerAttention", kwargs, teacher, student
        )
        teacher_paths = _paths(teacher, "teacher")
        student_paths = _paths(student, "student")
        if layer_map == "uniform":
            indices = uniform_layer_map(len(teacher_paths), len(student_paths))
        else:
            indices = list(layer_map)
            if len(indices) != len(student_paths) or not all(
                isinstance(i, int) and 0 <= i < len(teacher_paths) for i in indices
            ):
                raise ValueError(
                    "`layer_map` must be 'uniform' or a list of one index "
                    f"into `teacher` (0..{len(teacher_paths) - 1}) per "
                    f"student layer ({len(student_paths)}); received "
                    f"{layer_map!r}."
                )
        if attention_loss not in ("mse", "kl"):
            raise ValueError(
                "`attention_loss` must be 'mse' or 'kl'; received "
                f"{attention_loss!r}."
            )
        if attention_weight < 0 or hidden_weight < 0:
            raise ValueError(
                "`attention_weight` and `hidden_weight` must be >= 0; "
                f"received {attention_weight} and {hidden_weight}."
            )
        mapped = [teacher_paths[i] for i in indices]
        hidden = bool(hidden_weight)

        def layer_sources(paths):
            return [
                sources.Group(scores=sources.Attention(p), hidden=sources.Layer(p))
                if hidden else sources.Group(scores=sources.Attention(p))
                for p in paths
            ]

        super().__init__(
            layer_sources(mapped), layer_sources(student_paths),
            input_mask=input_mask, name=name, **kwargs,
        )
        self._teacher_paths = teacher_paths
        self._student_paths = student_paths
        self.layer_map = layer_map if layer_map == "uniform" else indices
        self.attention_loss = attention_loss
        self.attention_weight = float(attention_weight)
        self.hidden_weight = float(hidden_weight)
        self.hidden = None
        if hidden:
            self.hidden = FitNet(
                mapped, student_paths, connector=connector, name=f"{self.name}_hidden"
            )
        self.built = self.hidden is None

    def build(self, teacher_specs, student_specs):
        """Creates the hidden-state projections from the features' shapes."""
        if self.hidden is not None:
            self.hidden.build(
                [t["hidden"] for t in teacher_specs],
                [s["hidden"] for s in student_specs],
            )
        self.built = True

    def validate_outputs(self, teacher_outputs, student_outputs):
        t = tuple(teacher_outputs["scores"]["scores"].shape)
        s = tuple(student_outputs["scores"]["scores"].shape)
        if len(t) != 4 or len(s) != 4 or t[1:] != s[1:]:
            raise ValueError(
                "TransformerAttention compares attention maps head by head, "
                "so teacher and student layers need the same number of heads "
                "and sequence lengths; got score shapes (batch, heads, "
                f"queries, keys) {t} and {s}."
            )

    def compute(self, context):
        teacher, student = context.teacher, context.student
        scores = student["scores"]
        values = attention_map_loss(
            teacher["scores"]["scores"], scores["scores"], self.attention_loss,
            scores.get("mask"),
        )
        queries = self._query_mask(scores, student.get("hidden"), context.mask)
        loss = self.attention_weight * weighted_mean(
            values, context.sample_weight, queries
        )
        if self.hidden is not None:
            hidden = self.hidden.per_sample(
                context._replace(teacher=teacher["hidden"], student=student["hidden"])
            )
            loss = loss + self.hidden_weight * weighted_mean(
                hidden, context.sample_weight, queries
            )
        return loss

    def _query_mask(self, attention, hidden, input_mask):
        """The real query positions, `(B, T)` booleans, or `None`.

        Queries to which the attention layer's mask leaves some key, and
        the padding mask of `input_mask` or of the student's hidden states.
        """
        masks = []
        if "mask" in attention:
            keys = ops.cast(attention["mask"], "float32")
            keys = keys * ops.ones_like(attention["scores"][:, 0])
            masks.append(ops.sum(keys, axis=-1) > 0)
        padding = input_mask
        if padding is None and hidden is not None:
            padding = self.padding_mask(hidden, None)
        if padding is not None:
            masks.append(ops.cast(padding, "bool"))
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else ops.logical_and(*masks)

    def get_config(self):
        config = super().get_config()
        config.update(
            teacher=self._teacher_paths,
            student=self._student_paths,
            layer_map=self.layer_map,
            attention_loss=self.attention_loss,
            attention_weight=self.attention_weight,
            hidden_weight=self.hidden_weight,
            connector=self.hidden.get_config()["connector"] if self.hidden else "auto",
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["connector"] = FitNet.connectors_from_config(config["connector"])
        return cls(**config)
