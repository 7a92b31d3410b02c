"""Tests of the drop-in `LogitsDistillation` and `FeatureDistillation`.

Values are checked against float64 NumPy references written below, and the
difference from `keras.distillation.LogitsDistillation` is pinned with the
formula Keras actually evaluates.
"""

import inspect

import keras
import numpy as np
import pytest

from keras_distill.losses import KD
from keras_distill.losses import BatchLoss
from keras_distill.losses import DistillationLoss
from keras_distill.losses import FeatureDistillation
from keras_distill.losses import LogitsDistillation
from keras_distill.losses import LossContext
from keras_distill.losses import PerSampleLoss
from keras_distill.losses import weighted_mean
from keras_distill.sources import Output
from keras_distill.taps import ForwardPass
from tests.reference import S_FIXED
from tests.reference import T_FIXED
from tests.reference import assert_close
from tests.reference import logits
from tests.reference import np_log_softmax
from tests.reference import np_softmax
from tests.reference import ref_kd
from tests.reference import to_np

# ---------------------------------------------------------------------------
# NumPy reference implementations (float64)
# ---------------------------------------------------------------------------


def ref_soft_cross_entropy(teacher, student, temperature):
    """T^2 H(softmax(t/T), softmax(s/T)) per sample."""
    p = np_softmax(np.asarray(teacher, np.float64) / temperature)
    log_q = np_log_softmax(np.asarray(student, np.float64) / temperature)
    return -(temperature**2) * np.sum(p * log_q, axis=-1)


def ref_keras_default_logits_distillation(teacher, student, temperature):
    """What keras.distillation.LogitsDistillation() evaluates by default.

    `keras.losses.get("kl_divergence")` is the *function*
    `keras.losses.kl_divergence`, not a `KLDivergence` instance, so Keras takes
    its "other losses" branch: the KL formula on the raw scaled logits t/T and
    s/T, each clipped to [1e-7, 1], without a softmax and without T^2.
    """
    a = np.clip(np.asarray(teacher, np.float64) / temperature, 1e-7, 1.0)
    b = np.clip(np.asarray(student, np.float64) / temperature, 1e-7, 1.0)
    return np.mean(np.sum(a * np.log(a / b), axis=-1))



def round_trip(loss):
    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )


# ---------------------------------------------------------------------------
# LogitsDistillation
# ---------------------------------------------------------------------------


def test_default_logits_distillation_is_kd_at_temperature_3():
    t, s = logits((6, 4), 1), logits((6, 4), 2)
    loss = LogitsDistillation()
    value = loss.compute_loss(t, s)
    assert tuple(value.shape) == ()
    assert_close(value, ref_kd(t, s, 3.0).mean())
    assert_close(value, to_np(KD(temperature=3.0).compute_loss(t, s)))


def test_kl_divergence_instance_is_kd():
    t, s = logits((6, 4), 3), logits((6, 4), 4)
    loss = LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence())
    assert_close(loss.compute_loss(t, s), ref_kd(t, s, 2.0).mean())


def test_logits_distillation_literal_value():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    # ref_kd(T_FIXED, S_FIXED, 3.0).mean(), computed once in float64.
    assert_close(LogitsDistillation().compute_loss(t, s), 0.45464546766889463)
    # ref_soft_cross_entropy(T_FIXED, S_FIXED, 3.0).mean(), likewise.
    assert_close(
        LogitsDistillation(loss="categorical_crossentropy").compute_loss(t, s),
        12.192359587768697,
    )


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: "categorical_crossentropy",
        lambda: keras.losses.categorical_crossentropy,
        lambda: keras.losses.CategoricalCrossentropy(),
        lambda: keras.losses.CategoricalCrossentropy(from_logits=True),
    ],
    ids=["name", "function", "instance", "instance_from_logits"],
)
def test_cross_entropy_is_soft_target_cross_entropy(make_loss):
    t, s = logits((6, 4), 5, scale=1.0), logits((6, 4), 6, scale=1.0)
    loss = LogitsDistillation(temperature=2.0, loss=make_loss())
    expected = ref_soft_cross_entropy(t, s, 2.0).mean()
    assert_close(loss.compute_loss(t, s), expected)
    # It differs from KD by T^2 times the teacher's (softened) entropy.
    p = np_softmax(t / 2.0)
    entropy = -4.0 * np.sum(p * np.log(p), axis=-1).mean()
    assert_close(loss.compute_loss(t, s), ref_kd(t, s, 2.0).mean() + entropy)


def test_logits_distillation_honours_sample_weight():
    t, s = logits((6, 4), 7), logits((6, 4), 8)
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "float32")
    expected = np.sum(ref_kd(t, s, 3.0) * w) / 6
    assert_close(LogitsDistillation().compute_loss(t, s, sample_weight=w), expected)


def test_list_structure_distils_only_non_none_outputs():
    t1, s1 = logits((6, 4), 9), logits((6, 4), 10)
    t2, s2 = logits((6, 4), 11), logits((6, 4), 12)
    first = LogitsDistillation(loss=["kl_divergence", None])
    assert_close(first.compute_loss([t1, t2], [s1, s2]), ref_kd(t1, s1, 3.0).mean())
    # Changing the skipped output changes nothing.
    assert_close(
        first.compute_loss([t1, t2 * 5.0], [s1, -s2]), ref_kd(t1, s1, 3.0).mean()
    )
    second = LogitsDistillation(loss=[None, "kl_divergence"])
    assert_close(second.compute_loss([t1, t2], [s1, s2]), ref_kd(t2, s2, 3.0).mean())
    both = LogitsDistillation(loss=["kl_divergence", "categorical_crossentropy"])
    assert_close(
        both.compute_loss([t1, t2], [s1, s2]),
        ref_kd(t1, s1, 3.0).mean() + ref_soft_cross_entropy(t2, s2, 3.0).mean(),
    )


def test_dict_structure():
    t = {"cls": logits((6, 4), 13), "aux": logits((6, 4), 14)}
    s = {"cls": logits((6, 4), 15), "aux": logits((6, 4), 16)}
    only_cls = LogitsDistillation(temperature=2.0, loss={"cls": "kl_divergence", "aux": None})
    assert_close(only_cls.compute_loss(t, s), ref_kd(t["cls"], s["cls"], 2.0).mean())
    mixed = LogitsDistillation(
        temperature=2.0,
        loss={"aux": "kl_divergence", "cls": "categorical_crossentropy"},
    )
    assert_close(
        mixed.compute_loss(t, s),
        ref_kd(t["aux"], s["aux"], 2.0).mean()
        + ref_soft_cross_entropy(t["cls"], s["cls"], 2.0).mean(),
    )


@pytest.mark.parametrize("cls", [LogitsDistillation, FeatureDistillation])
@pytest.mark.parametrize("loss", [None, [None, None], {"a": None}])
def test_all_none_loss_raises(cls, loss):
    with pytest.raises(ValueError, match="None"):
        cls(loss=loss)


@pytest.mark.parametrize("cls", [LogitsDistillation, FeatureDistillation])
def test_structure_mismatch_raises(cls):
    t1, t2 = logits((6, 4), 17), logits((6, 4), 18)
    loss = cls(loss=["mse" if cls is FeatureDistillation else "kl_divergence", None])
    with pytest.raises(ValueError, match="structure"):
        loss.compute_loss([t1, t2, t1], [t1, t2, t1])
    with pytest.raises(ValueError, match="structure"):
        loss.compute_loss(t1, t2)
    with pytest.raises(ValueError, match="structure"):
        loss.compute_loss({"a": t1, "b": t2}, {"a": t1, "b": t2})
    dict_loss = cls(loss={"a": "mse" if cls is FeatureDistillation else "kl_divergence"})
    with pytest.raises(ValueError, match="structure"):
        dict_loss.compute_loss({"b": t1}, {"b": t2})


def test_logits_distillation_class_count_mismatch_raises():
    with pytest.raises(ValueError, match="4"):
        LogitsDistillation().compute_loss(logits((6, 4), 19), logits((6, 5), 20))


def test_logits_distillation_bad_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        LogitsDistillation(temperature=0.0)
    with pytest.raises(TypeError, match="temperature"):
        LogitsDistillation(temperature="3")


def test_logits_distillation_multiple_outputs_without_structure_raises():
    t = [logits((6, 4), 21), logits((6, 4), 22)]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LogitsDistillation().compute_loss(t, t)


# ---------------------------------------------------------------------------
# Contrast with keras.distillation.LogitsDistillation
# ---------------------------------------------------------------------------


def test_keras_default_logits_distillation_skips_the_softmax():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    # Ours: the correct KD value, ref_kd(T_FIXED, S_FIXED, 3.0).mean().
    correct = 0.45464546766889463
    assert_close(LogitsDistillation(temperature=3.0).compute_loss(t, s), correct)
    # Keras: KL on clipped raw logits / T, no softmax, no T^2; computed once
    # with ref_keras_default_logits_distillation(T_FIXED, S_FIXED, 3.0).
    keras_value = to_np(
        keras.distillation.LogitsDistillation(temperature=3.0).compute_loss(t, s)
    )
    np.testing.assert_allclose(
        keras_value, ref_keras_default_logits_distillation(t, s, 3.0), rtol=1e-5
    )
    np.testing.assert_allclose(keras_value, 3.039466367420603, rtol=1e-5)
    assert abs(keras_value - correct) > 1.0


def test_keras_with_kl_divergence_instance_agrees_with_ours():
    """Keras's softmax branch runs only for a `KLDivergence` instance."""
    t, s = logits((6, 4), 23), logits((6, 4), 24)
    keras_value = keras.distillation.LogitsDistillation(
        temperature=3.0, loss=keras.losses.KLDivergence()
    ).compute_loss(t, s)
    ours = LogitsDistillation(temperature=3.0).compute_loss(t, s)
    assert_close(ours, ref_kd(t, s, 3.0).mean())
    np.testing.assert_allclose(to_np(keras_value), to_np(ours), rtol=1e-4)


# ---------------------------------------------------------------------------
# FeatureDistillation
# ---------------------------------------------------------------------------


def test_feature_distillation_mse():
    t, s = logits((6, 8), 25), logits((6, 8), 26)
    loss = FeatureDistillation(loss="mse")
    expected = np.mean((t.astype(np.float64) - s) ** 2)
    assert_close(loss.compute_loss(t, s), expected)
    assert_close(FeatureDistillation().compute_loss(t, s), expected)
    assert_close(
        FeatureDistillation(loss=keras.losses.MeanSquaredError()).compute_loss(t, s),
        expected,
    )
    # Sequence features (B, T, D): the mean over every element as well.
    t3, s3 = logits((3, 5, 4), 27), logits((3, 5, 4), 28)
    assert_close(loss.compute_loss(t3, s3), np.mean((t3.astype(np.float64) - s3) ** 2))


def test_feature_distillation_mae_literal():
    t = np.array(T_FIXED, "float32")
    s = np.array(S_FIXED, "float32")
    # mean(|T_FIXED - S_FIXED|) = (2.5 + 3.0 + 5.25) / 12 = 10.75 / 12, by hand.
    assert_close(FeatureDistillation(loss="mae").compute_loss(t, s), 10.75 / 12)


def test_feature_distillation_honours_sample_weight():
    t, s = logits((6, 8), 29), logits((6, 8), 30)
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "float32")
    per_sample = np.mean((t.astype(np.float64) - s) ** 2, axis=-1)
    expected = np.sum(per_sample * w) / 6
    loss = FeatureDistillation(loss="mse")
    assert_close(loss.compute_loss(t, s, sample_weight=w), expected)
    # A zero weight makes the sample irrelevant.
    t_garbage = t.copy()
    t_garbage[1] = 1e3
    assert_close(loss.compute_loss(t_garbage, s, sample_weight=w), expected)


@pytest.mark.parametrize(
    "teacher_shape,student_shape",
    [((6, 8), (6, 6)), ((6, 8), (6, 2, 4)), ((3, 5, 4), (3, 4, 4))],
)
def test_feature_shape_mismatch_raises(teacher_shape, student_shape):
    with pytest.raises(ValueError, match="shape"):
        FeatureDistillation().compute_loss(
            logits(teacher_shape, 31), logits(student_shape, 32)
        )


def test_feature_distillation_layer_names_select_features():
    t, s = logits((6, 8), 33), logits((6, 8), 34)
    other = logits((6, 8), 35)
    loss = FeatureDistillation(teacher_layer_name="h", student_layer_name="h2")
    assert loss.tap_paths("teacher") == ("h",)
    assert loss.tap_paths("student") == ("h2",)
    expected = np.mean((t.astype(np.float64) - s) ** 2)
    # Given directly, the features are what it compares...
    assert_close(loss.compute_loss(t, s), expected)
    # ...and from forward passes it reads those of the named layers.
    outputs = logits((6, 3), 46)
    assert_close(
        loss.from_passes(
            ForwardPass(outputs, {"h": t, "h2": other}),
            ForwardPass(outputs, {"h": other, "h2": s}),
        ),
        expected,
    )
    with pytest.raises(KeyError):
        loss.from_passes(ForwardPass(outputs, {"x": t}), ForwardPass(outputs, {"h2": s}))
    # Without layer names it reads the outputs, in their structure.
    on_outputs = FeatureDistillation(loss=[None, "mse"])
    assert on_outputs.tap_paths("teacher") == ()
    assert_close(
        on_outputs.from_passes(ForwardPass([other, t], {"h": other}),
                               ForwardPass([outputs, s], {})),
        expected,
    )


def test_feature_distillation_nested_losses():
    t = [logits((6, 8), 36), logits((6, 3), 37)]
    s = [logits((6, 8), 38), logits((6, 3), 39)]
    mse0 = np.mean((t[0].astype(np.float64) - s[0]) ** 2)
    mae1 = np.mean(np.abs(t[1].astype(np.float64) - s[1]))
    assert_close(FeatureDistillation(loss=["mse", None]).compute_loss(t, s), mse0)
    assert_close(FeatureDistillation(loss=[None, "mae"]).compute_loss(t, s), mae1)
    assert_close(FeatureDistillation(loss=["mse", "mae"]).compute_loss(t, s), mse0 + mae1)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------


def _logits_inputs():
    t1, s1 = logits((6, 4), 40), logits((6, 4), 41)
    t2, s2 = logits((6, 4), 42), logits((6, 4), 43)
    return {"single": (t1, s1), "list": ([t1, t2], [s1, s2]),
            "dict": ({"a": t1, "b": t2}, {"a": s1, "b": s2})}


SERIALIZATION_CASES = [
    (lambda: LogitsDistillation(), "single"),
    (lambda: LogitsDistillation(temperature=2.5, name="ld"), "single"),
    (lambda: LogitsDistillation(loss=keras.losses.KLDivergence()), "single"),
    (lambda: LogitsDistillation(
        loss=keras.losses.CategoricalCrossentropy(from_logits=True)), "single"),
    (lambda: LogitsDistillation(loss=["kl_divergence", None]), "list"),
    (lambda: LogitsDistillation(loss=[None, "categorical_crossentropy"]), "list"),
    (lambda: LogitsDistillation(
        temperature=2.0,
        loss={"a": keras.losses.CategoricalCrossentropy(from_logits=True), "b": None},
    ), "dict"),
    (lambda: LogitsDistillation(loss={"a": "kl_divergence", "b": "kl_divergence"}), "dict"),
    (lambda: FeatureDistillation(), "single"),
    (lambda: FeatureDistillation(loss="mae", name="fd"), "single"),
    (lambda: FeatureDistillation(loss=["mse", None]), "list"),
    (lambda: FeatureDistillation(loss={"a": keras.losses.MeanAbsoluteError(), "b": "mse"}), "dict"),
]


@pytest.mark.parametrize("make_loss,inputs", SERIALIZATION_CASES)
def test_serialization_round_trip(make_loss, inputs):
    loss = make_loss()
    restored = round_trip(loss)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    skipped = [fn is None for fn in keras.tree.flatten(loss.loss)]
    assert [fn is None for fn in keras.tree.flatten(restored.loss)] == skipped
    t, s = _logits_inputs()[inputs]
    original = to_np(loss.compute_loss(t, s))
    assert np.isfinite(original) and original > 0
    assert_close(restored.compute_loss(t, s), original, rtol=0, atol=0)


def test_feature_distillation_layer_names_survive_serialization():
    loss = FeatureDistillation(loss="mse", teacher_layer_name="h", student_layer_name="h2")
    restored = round_trip(loss)
    assert restored.teacher_layer_name == "h"
    assert restored.student_layer_name == "h2"
    assert restored.tap_paths("teacher") == ("h",)
    assert restored.tap_paths("student") == ("h2",)
    t, s = logits((6, 8), 44), logits((6, 8), 45)
    assert_close(
        restored.from_passes(ForwardPass(None, {"h": t}), ForwardPass(None, {"h2": s})),
        np.mean((t.astype(np.float64) - s) ** 2),
    )


@pytest.mark.parametrize(
    "loss,expected",
    [
        (LogitsDistillation, {"temperature", "loss", "name"}),
        (FeatureDistillation, {"loss", "teacher_layer_name", "student_layer_name", "name"}),
    ],
)
def test_get_config_is_the_constructor_arguments(loss, expected):
    params = set(inspect.signature(loss.__init__).parameters) - {"self", "kwargs"}
    assert params == expected
    assert set(loss().get_config()) == expected


def test_get_config_values():
    assert LogitsDistillation(temperature=2.5, name="ld").get_config() == {
        "name": "ld",
        "temperature": 2.5,
        "loss": keras.saving.serialize_keras_object(keras.losses.kl_divergence),
    }
    assert FeatureDistillation(
        loss=["mse", None], teacher_layer_name="a", student_layer_name="b"
    ).get_config() == {
        "name": "feature_distillation",
        "loss": [keras.saving.serialize_keras_object(keras.losses.mean_squared_error), None],
        "teacher_layer_name": "a",
        "student_layer_name": "b",
    }


# ---------------------------------------------------------------------------
# The bases: PerSampleLoss reduces as keras.losses.Loss does
# ---------------------------------------------------------------------------


def squared_error(a, b):
    a, b = keras.ops.cast(a, "float32"), keras.ops.cast(b, "float32")
    return keras.ops.mean(keras.ops.square(a - b), axis=-1)


class SquaredError(PerSampleLoss):
    def per_sample(self, context):
        return squared_error(context.teacher, context.student)


class KerasSquaredError(keras.losses.Loss):
    """The same per-sample values as a Keras loss ("sum_over_batch_size")."""

    def call(self, y_true, y_pred):
        return squared_error(y_true, y_pred)


def masked_sequences():
    """Student features with a Keras padding mask, teacher features, mask."""
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 1, 2, 0], [3, 0, 0, 0, 0]], "int32")
    embed = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(6, 4, mask_zero=True)]
    )
    return embed(tokens), logits((3, 5, 4), 50), tokens != 0


def test_per_sample_reduction_is_keras_losses_reduction():
    """Without weights, with sample weights, and with a Keras mask on the
    student's tensor (y_pred), PerSampleLoss gives what keras.losses.Loss
    gives for the same per-sample values, on every backend."""
    ours, theirs = SquaredError(), KerasSquaredError()
    t, s = logits((6, 4), 47), logits((6, 4), 48)
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], "float32")
    values = np.mean((s.astype(np.float64) - t) ** 2, -1)
    assert_close(ours.compute_loss(t, s), theirs(t, s))
    assert_close(ours.compute_loss(t, s), values.mean())
    assert_close(ours.compute_loss(t, s, sample_weight=w), theirs(t, s, sample_weight=w))
    assert_close(ours.compute_loss(t, s, sample_weight=w), np.sum(values * w) / 6)

    student, teacher, mask = masked_sequences()
    values = np.mean((to_np(student) - teacher) ** 2, -1)
    expected = values[mask].mean()
    assert not np.isclose(expected, values.mean())
    assert_close(theirs(teacher, student), expected)  # Keras honours the mask
    assert_close(ours.compute_loss(teacher, student), to_np(theirs(teacher, student)))
    w = np.array([1.0, 3.0, 0.5], "float32")
    # (Keras multiplies the weights by the (B, T) mask in place before
    # broadcasting them, so it takes the weights of sequences as (B, T).)
    per_position = np.repeat(w[:, None], 5, axis=1)
    keras_value = to_np(theirs(teacher, student, sample_weight=per_position))
    assert_close(ours.compute_loss(teacher, student, sample_weight=w), keras_value)
    assert_close(ours.compute_loss(teacher, student, sample_weight=per_position), keras_value)
    assert_close(
        ours.compute_loss(teacher, student, sample_weight=w),
        np.sum(values * w[:, None] * mask) / mask.sum(),
    )


def test_weighted_mean():
    values = logits((3, 5), 51)
    w = np.array([1.0, 3.0, 0.5], "float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
    assert_close(weighted_mean(values), values.astype(np.float64).mean())
    assert_close(weighted_mean(values, w), np.sum(values * w[:, None]) / 15)
    assert_close(weighted_mean(values, mask=mask), values[mask].mean())
    assert_close(weighted_mean(values, w, mask), np.sum(values * w[:, None] * mask) / 8)
    # No valid entry: 0, not NaN.
    assert_close(weighted_mean(values, mask=np.zeros((3, 5), bool)), 0.0)


class ContextRecorder(PerSampleLoss):
    """A custom loss on the new base: reads every field of its context."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def per_sample(self, context):
        assert isinstance(context, LossContext)
        self.seen.append(context)
        offset = keras.ops.cast(context.inputs["offset"], "float32") * (context.pair + 1)
        return squared_error(context.teacher, context.student) + offset


def test_custom_per_sample_loss_gets_one_context_per_pair():
    loss = ContextRecorder(["t1", "t2"], [Output("a"), "s2"], name="recorder")
    t1, t2, s_a, s2 = (logits((4, 3), seed) for seed in (52, 53, 54, 55))
    labels = np.array([0, 1, 2, 0])
    w = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    inputs = {"offset": np.full((4,), 0.5, "float32")}
    value = loss.from_passes(
        ForwardPass({"a": s2, "b": t1}, {"t1": t1, "t2": t2}),
        ForwardPass({"a": s_a, "b": t2}, {"s2": s2}),
        labels=labels, sample_weight=w, inputs=inputs, training=True,
    )
    first = np.mean((s_a.astype(np.float64) - t1) ** 2, -1) + 0.5
    second = np.mean((s2.astype(np.float64) - t2) ** 2, -1) + 1.0
    assert_close(value, np.sum(first * w) / 4 + np.sum(second * w) / 4)
    assert [c.pair for c in loss.seen] == [0, 1]
    for context in loss.seen:
        assert context.labels is labels and context.sample_weight is w
        assert context.inputs is inputs and context.training is True
        assert context.mask is None
    assert_close(loss.seen[1].student, s2)


class BatchSpread(BatchLoss):
    """A custom whole-batch loss: the squared difference of the spreads."""

    def compute(self, context):
        def spread(x):
            return keras.ops.mean(keras.ops.var(keras.ops.cast(x, "float32"), axis=0))

        return keras.ops.square(spread(context.teacher) - spread(context.student))


def test_custom_batch_loss_and_a_loss_returning_no_scalar():
    t, s = logits((6, 4), 56), logits((6, 3), 57)
    expected = (t.astype(np.float64).var(0).mean() - s.astype(np.float64).var(0).mean()) ** 2
    assert_close(BatchSpread().compute_loss(t, s), expected, rtol=1e-4)

    class NotReduced(BatchLoss):
        def compute(self, context):
            return squared_error(context.teacher, context.student)

    with pytest.raises(ValueError, match="scalar"):
        NotReduced().compute_loss(t, t)
    with pytest.raises(NotImplementedError, match="per_sample"):
        PerSampleLoss().compute_loss(t, t)


class KerasStyle(DistillationLoss):
    """Written for keras.distillation: overrides compute_loss itself."""

    def compute_loss(self, teacher_outputs, student_outputs, sample_weight=None):
        return weighted_mean(squared_error(teacher_outputs, student_outputs), sample_weight)


def test_a_keras_distillation_style_loss_gets_the_tensors_its_sources_read():
    t, s = logits((6, 4), 58), logits((6, 4), 59)
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], "float32")
    values = np.mean((t.astype(np.float64) - s) ** 2, -1)
    loss = KerasStyle(Output("logits"), Output("logits"))
    value = loss.from_passes(
        ForwardPass({"logits": t, "other": s}, {}),
        ForwardPass({"logits": s, "other": t}, {}),
        labels=np.zeros(6), sample_weight=w, training=True,
    )
    assert_close(value, np.sum(values * w) / 6)

