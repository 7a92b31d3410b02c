"""Feature-based distillation: losses on intermediate layers' outputs.

These losses read the outputs of named layers of the teacher and the
student (`teacher="block3"`, `student="conv3"`), taken in the same forward
pass that produces the models' outputs. They compare one or several
(teacher layer, student layer) pairs (lists of paths) and sum the pairs'
losses.
"""

import keras
from keras import ops

from keras_distill.losses.base import PerSampleLoss


def hidden_cosine(teacher_hidden, student_hidden):
    """One minus the cosine similarity of hidden states, per position.

    The cosine-embedding term of DistilBERT's triple loss: it aligns the
    directions of the student's hidden states with the teacher's.

    Args:
        teacher_hidden: teacher features, shape `(B, ..., D)`.
        student_hidden: student features of the same shape.

    Returns:
        `1 - cos(teacher, student)` over the last axis, shape `(B, ...)`.

    Reference:
        Sanh, Debut, Chaumond and Wolf, "DistilBERT, a distilled version of
        BERT: smaller, faster, cheaper and lighter", 2019.
    """
    t = ops.cast(teacher_hidden, "float32")
    s = ops.cast(student_hidden, "float32")
    dot = ops.sum(t * s, axis=-1)
    norms = ops.sqrt(
        ops.maximum(ops.sum(t * t, axis=-1) * ops.sum(s * s, axis=-1), 1e-24)
    )
    return 1.0 - dot / norms


@keras.saving.register_keras_serializable(package="keras_distill")
class HiddenCosine(PerSampleLoss):
    """Aligns the student's hidden states with the teacher's, by direction.

    `1 - cos(teacher_hidden, student_hidden)` per position, averaged over
    unpadded positions (the student's padding mask) with `sample_weight`,
    summed over layer pairs. The paired layers must have the same width.

    Args:
        teacher: a teacher layer path, or a list of them (any source).
        student: the matching student layer path(s).
        input_mask: the key of a dict input holding a boolean mask of real
            positions (`"padding_mask"` for keras-hub models). Defaults to
            `None`: the features' own Keras mask, if any.
        name: the loss's name in the logs. Defaults to `"hidden_cosine"`.

    Example:

    ```python
    keras_distill.losses.HiddenCosine("encoder_out", "encoder_out")
    ```

    Reference:
        Sanh et al., "DistilBERT, a distilled version of BERT", 2019.
    """

    def validate_outputs(self, teacher_outputs, student_outputs):
        t, s = teacher_outputs.shape[-1], student_outputs.shape[-1]
        if t is not None and s is not None and t != s:
            raise ValueError(
                f"HiddenCosine compares hidden states of equal width, but the "
                f"teacher's have {t} features and the student's {s}. Pair "
                "layers of the same width."
            )

    def per_sample(self, context):
        return hidden_cosine(context.teacher, context.student)


def connector_for(student_shape, teacher_shape, name=None):
    """A layer mapping student features of one shape to the teacher's shape.

    - Vectors and sequences `(B, ..., D_s)` of the teacher's leading shape: a
      `Dense(D_t)` projection.
    - Feature maps `(B, H, W, C_s)`: a 1x1 `Conv2D(C_t)` when the spatial
      sizes agree; otherwise the FitNets regressor, a convolution with
      "valid" padding whose kernel shrinks `(H_s, W_s)` to `(H_t, W_t)`
      (a transposed convolution when the student's map is the smaller).

    Args:
        student_shape: the student feature's shape, batch axis included.
        teacher_shape: the teacher feature's shape, batch axis included.
        name: the layer's name. Defaults to `None`.

    Returns:
        An unbuilt `keras.layers.Layer` that computes in float32, as the
        losses do, whatever the global dtype policy.

    Raises:
        ValueError: for shapes no connector of these kinds can map.
    """
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        (hs, ws, _), (ht, wt, channels) = student_shape[1:], teacher_shape[1:]
        if (hs, ws) == (ht, wt):
            return keras.layers.Conv2D(channels, 1, name=name, dtype="float32")
        if hs >= ht and ws >= wt:
            return keras.layers.Conv2D(
                channels, (hs - ht + 1, ws - wt + 1), padding="valid", name=name,
                dtype="float32",
            )
        if hs <= ht and ws <= wt:
            return keras.layers.Conv2DTranspose(
                channels, (ht - hs + 1, wt - ws + 1), padding="valid", name=name,
                dtype="float32",
            )
    elif len(student_shape) == len(teacher_shape) and (
        student_shape[1:-1] == teacher_shape[1:-1]
    ):
        return keras.layers.Dense(teacher_shape[-1], name=name, dtype="float32")
    raise ValueError(
        f"No automatic connector maps student features of shape "
        f"{student_shape} to the teacher's {teacher_shape}: pass a Keras layer "
        "as `connector=` that does."
    )


@keras.saving.register_keras_serializable(package="keras_distill")
class FitNet(PerSampleLoss):
    """FitNets hint regression through a learned connector.

    The student's guided layer is mapped to the shape of the teacher's hint
    layer by a connector (`connector_for` builds one from the two shapes, or
    pass any Keras layer), and the loss is the mean squared error between
    the connector's output and the teacher's hint, per position, averaged
    with `sample_weight` and padding masks, summed over layer pairs. The
    connectors belong to this loss: the Distiller's optimizer trains them,
    they are saved with the Distiller, and `export_student` leaves them out.

    Args:
        teacher: the hint layer's path, or a list of them (any source).
        student: the guided layer's path(s), one per hint layer.
        connector: `"auto"`, a Keras layer, or a list with one of either per
            layer pair. Defaults to `"auto"`.
        input_mask: the key of a dict input holding a boolean mask of real
            positions. Defaults to `None`: the features' own Keras mask.
        name: the loss's name in the logs. Defaults to `"fit_net"`.

    Example:

    ```python
    hints = keras_distill.losses.FitNet(["block2", "block3"], ["conv2", "conv3"])
    ```

    Reference:
        Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints
        for Thin Deep Nets", ICLR 2015.
    """

    def __init__(
        self, teacher=None, student=None, *, connector="auto", input_mask=None,
        name=None, **kwargs
    ):
        super().__init__(teacher, student, input_mask=input_mask, name=name, **kwargs)
        count = len(self.teacher_sources)
        connectors = connector if isinstance(connector, (list, tuple)) else (
            [connector] * count
        )
        if len(connectors) != count:
            raise ValueError(
                f"FitNet got {len(connectors)} connectors for {count} layer "
                "pairs; give one per pair, or a single one for all."
            )
        for c in connectors:
            if c != "auto" and not isinstance(c, keras.layers.Layer):
                raise TypeError(
                    f"FitNet: a connector must be 'auto' or a Keras layer; "
                    f"received {c!r}."
                )
        self._connector_spec = list(connectors)
        self.connectors = []
        self.built = False

    def build(self, teacher_specs, student_specs):
        """Creates the connectors from the shapes of the paired features.

        Args:
            teacher_specs: one tensor (or `keras.KerasTensor`) per pair,
                shaped like the teacher's features.
            student_specs: the same for the student's.
        """
        for i, (t_spec, s_spec, spec) in enumerate(
            zip(teacher_specs, student_specs, self._connector_spec)
        ):
            t_shape, s_shape = tuple(t_spec.shape), tuple(s_spec.shape)
            layer = (
                connector_for(s_shape, t_shape, name=f"connector_{i}")
                if spec == "auto"
                else spec
            )
            if not layer.built:
                layer.build(s_shape)
            out_shape = tuple(layer.compute_output_shape(s_shape))
            if out_shape[1:] != t_shape[1:]:
                raise ValueError(
                    f"FitNet's connector for pair {i} ({self.student_sources[i]}"
                    f" -> {self.teacher_sources[i]}) gives features of shape "
                    f"{out_shape}, not the teacher's {t_shape}."
                )
            self.connectors.append(layer)
        self.built = True

    def project(self, context):
        """The student's tensor of this pair, through its connector."""
        # A Keras layer call carries the padding mask over where it applies.
        return self.connectors[context.pair](context.student)

    def per_sample(self, context):
        difference = ops.cast(self.project(context), "float32") - ops.cast(
            context.teacher, "float32"
        )
        return ops.mean(ops.square(difference), axis=-1)

    def get_config(self):
        config = super().get_config()
        connectors = [
            c if c == "auto" else keras.saving.serialize_keras_object(c)
            for c in self._connector_spec
        ]
        config["connector"] = connectors[0] if len(connectors) == 1 else connectors
        return config

    @staticmethod
    def connectors_from_config(spec):
        """The `connector` argument, from its `get_config` form."""

        def connector(c):
            return c if c == "auto" else keras.saving.deserialize_keras_object(c)

        return [connector(c) for c in spec] if isinstance(spec, list) else connector(spec)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["connector"] = cls.connectors_from_config(config["connector"])
        return cls(**config)
