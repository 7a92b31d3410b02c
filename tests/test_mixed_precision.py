"""Mixed precision: the losses compute in float32, training matches float32.

Under `keras.mixed_precision` policies the teacher and the student compute
in float16 or bfloat16 (variables stay float32), and `compile` wraps the
optimizer in a `LossScaleOptimizer` for `mixed_float16`. Every distillation
loss, its learned connectors and heads included, computes in float32 from
the half-precision features it receives.
"""

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill import losses
from keras_distill import _keras_internals as internals
from tests.conftest import classification_data
from tests.conftest import mlp

POLICIES = ["mixed_bfloat16", "mixed_float16"]
SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


# -- Every loss computes in float32 ---------------------------------------

LOGITS = (8, 5)  # large logits: most probabilities below float16's resolution
VECTORS, NARROW = (8, 12), (8, 6)
MAPS, THIN_MAPS = (8, 4, 4, 6), (8, 4, 4, 3)
LOSSES = {  # name: (factory, teacher's shape, student's shape)
    "kd": (lambda: losses.KD(temperature=1.0), LOGITS, LOGITS),
    "kd_reverse": (
        lambda: losses.KD(temperature=2.0, divergence="reverse"), LOGITS, LOGITS
    ),
    "kd_js": (lambda: losses.KD(temperature=2.0, divergence="js"), LOGITS, LOGITS),
    "dkd": (losses.DKD, LOGITS, LOGITS),
    "dist": (losses.DIST, LOGITS, LOGITS),
    "logits_kl": (
        lambda: keras_distill.LogitsDistillation(temperature=2.0), LOGITS, LOGITS
    ),
    "logits_cross_entropy": (
        lambda: keras_distill.LogitsDistillation(
            temperature=2.0, loss="categorical_crossentropy"
        ),
        LOGITS,
        LOGITS,
    ),
    "rkd": (losses.RKD, VECTORS, NARROW),
    "similarity_preserving": (losses.SimilarityPreserving, VECTORS, NARROW),
    "pkt": (losses.PKT, VECTORS, NARROW),
    "correlation_congruence": (losses.CorrelationCongruence, VECTORS, NARROW),
    # On tapped layers "t" and "s"; FitNet's connector and CRD's heads are
    # layers of their own, which the global policy would make half.
    "fitnet": (lambda: losses.FitNet("t", "s"), VECTORS, NARROW),
    "crd": (
        lambda: losses.CRD("t", "s", embedding_dim=4, queue_size=16),
        VECTORS,
        NARROW,
    ),
    "hidden_cosine": (lambda: losses.HiddenCosine("t", "s"), NARROW, NARROW),
    "feature_distillation": (
        lambda: keras_distill.FeatureDistillation("mse", "t", "s"), NARROW, NARROW
    ),
    "attention_transfer": (
        lambda: losses.AttentionTransfer("t", "s"), MAPS, THIN_MAPS
    ),
}


def loss_and_inputs(name, dtype):
    """A new loss, built, and teacher and student inputs in `dtype`."""
    factory, teacher_shape, student_shape = LOSSES[name]
    rng = np.random.default_rng(0)
    teacher, student = (
        keras.ops.cast(rng.normal(scale=8.0, size=shape).astype("float32"), dtype)
        for shape in (teacher_shape, student_shape)
    )
    loss = factory()
    if not loss.built:  # FitNet's connector, CRD's heads: from what they read
        loss.build([teacher], [student])
    return loss, teacher, student


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_compute_in_float32_from_half_precision_inputs(policy, name):
    """A loss built under a mixed policy, fed half-precision tensors, gives
    what the float32 loss gives on the same numbers held in float32."""
    half = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    labels = np.random.default_rng(1).integers(0, LOGITS[-1], LOGITS[0])
    reference, teacher, student = loss_and_inputs(name, half)
    keras.config.set_dtype_policy(policy)  # connectors and heads would see it
    loss, _, _ = loss_and_inputs(name, half)
    loss.set_weights(reference.get_weights())

    value = loss.compute_loss(teacher, student, labels=labels)
    as_float32 = lambda t: keras.ops.cast(t, "float32")  # noqa: E731 (exact)
    expected = reference.compute_loss(
        keras.tree.map_structure(as_float32, teacher),
        keras.tree.map_structure(as_float32, student),
        labels=labels,
    )
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    value, expected = (float(keras.ops.convert_to_numpy(v)) for v in (value, expected))
    assert np.isfinite(value) and expected > 1e-3, (value, expected)
    # Half-precision arithmetic anywhere would be off by ~1e-3 (float16)
    # or ~1e-2 (bfloat16) relative.
    np.testing.assert_allclose(value, expected, rtol=2e-5)


# -- Training under a mixed policy matches float32 -------------------------


def train(policy, epochs=3):
    """Distils with KD and a FitNet hint under `policy`, from fixed weights."""
    keras.config.set_dtype_policy(policy)
    teacher, student = mlp(32, name="teacher"), mlp(16, name="student")
    rng = np.random.default_rng(0)
    for model in (teacher, student):
        model.set_weights(
            [rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()]
        )
    distiller = keras_distill.Distiller(
        teacher,
        student,
        [losses.KD(temperature=2.0), losses.FitNet("hidden", "hidden")],
        student_loss_weight=0.3,
        distillation_loss_weights=[0.7, 0.1],
    )
    fitnet = distiller.distillation_losses[1]
    fitnet.set_weights(
        [rng.normal(scale=0.3, size=w.shape) for w in fitnet.get_weights()]
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE)
    x, y = classification_data(128)
    history = distiller.fit(
        x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0
    ).history
    return distiller, history


@pytest.mark.parametrize("policy", POLICIES)
def test_training_under_a_mixed_policy_is_finite_and_matches_float32(policy):
    reference, expected = train("float32")
    distiller, history = train(policy)

    half = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    for model in (distiller.teacher, distiller.student):
        hidden = model.get_layer("hidden")
        assert hidden.compute_dtype == half and hidden.kernel.dtype == "float32"
    # Keras scales float16 losses (and skips steps that overflow); at other
    # policies the Distiller's own wrapper only skips non-finite steps.
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    skipping_only = isinstance(distiller.optimizer, internals.SkipsNonFiniteSteps)
    assert skipping_only == (policy != "mixed_float16")

    keys = ("loss", "student_loss", "kd", "fit_net", "distillation_loss")
    for key in keys:
        values = np.array(history[key])
        assert np.all(np.isfinite(values)), (key, values)
        np.testing.assert_allclose(
            values, expected[key], rtol=TOLERANCE[policy], err_msg=key
        )
    assert history["loss"][-1] < history["loss"][0]  # it trains
    for ours, theirs in zip(
        distiller.student.get_weights(), reference.student.get_weights()
    ):
        np.testing.assert_allclose(ours, theirs, atol=WEIGHT_TOLERANCE[policy])


# Half-precision rounding differs between CPUs (oneDNN picks bfloat16
# kernels by instruction set): here the largest differences measured on the
# three backends were 6e-4 (bfloat16) and 2e-4 (float16), relative, of the
# logged losses, and 7e-4 and 1.4e-5, absolute, of the student's weights; a
# CI machine measured 3.8e-3 for bfloat16's losses, one unit of its
# precision (2**-8 = 3.9e-3). So bfloat16 gets two units of its precision,
# float16 five times what was measured.
TOLERANCE = {"mixed_bfloat16": 2 * 2.0**-8, "mixed_float16": 1e-3}
WEIGHT_TOLERANCE = {"mixed_bfloat16": 2 * 2.0**-8, "mixed_float16": 1e-4}
