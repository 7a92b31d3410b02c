"""The Distiller end to end: training, metrics, weighting, saving, errors."""

import os

import keras
from keras import ops
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import DKD
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from keras_distill.sources import Output
from tests.conftest import SubclassedClassifier
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import np_softmax
from tests.reference import ref_kd as np_kd
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
JIT_MODES = [False] if keras.backend.backend() == "torch" else [False, True]


def np_scce(logits, y):
    log_q = np.log(np_softmax(logits))
    return -np.take_along_axis(log_q, y[..., None], -1)[..., 0]


def make_distiller(losses=None, **kwargs):
    teacher, student = mlp(32, name="teacher"), mlp(4, name="student")
    losses = KD(temperature=2.0) if losses is None else losses
    return keras_distill.Distiller(teacher, student, losses, **kwargs)


@pytest.mark.parametrize("jit_compile", JIT_MODES)
def test_fit_logs_every_term_and_reduces_the_distillation_loss(jit_compile):
    x, y = classification_data(128)
    distiller = make_distiller()
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=SCCE,
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    history = distiller.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    for key in ("loss", "student_loss", "kd", "distillation_loss",
                "teacher_agreement", "accuracy"):
        assert key in history, sorted(history)
    assert history["kd"][-1] < 0.7 * history["kd"][0]
    assert np.all(np.isfinite(history["loss"]))


def test_evaluate_matches_an_independent_computation_of_every_term():
    x, y = classification_data(64)
    distiller = make_distiller(
        student_loss_weight=0.3, distillation_loss_weights=[2.0]
    )
    distiller.compile(loss=SCCE)
    logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    t = distiller.teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")
    kd = np_kd(t, s, 2.0).mean()
    student_loss = np_scce(s, y).mean()
    np.testing.assert_allclose(logs["kd"], kd, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-4)
    np.testing.assert_allclose(logs["distillation_loss"], 2.0 * kd, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], 0.3 * student_loss + 2.0 * kd, rtol=1e-4
    )
    agreement = (t.argmax(-1) == s.argmax(-1)).mean()
    np.testing.assert_allclose(logs["teacher_agreement"], agreement, rtol=1e-6)


def test_the_logged_total_is_this_steps_loss_with_regularization():
    x, y = classification_data(32)
    teacher = mlp(32, name="teacher")
    student = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(4, activation="relu", name="hidden",
                           kernel_regularizer=keras.regularizers.L2(0.05)),
        keras.layers.Dense(3, name="logits"),
    ], name="student")
    distiller = keras_distill.Distiller(
        teacher, student, KD(temperature=2.0), student_loss_weight=0.3,
        distillation_loss_weights=[0.6],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    t = teacher.predict(x, verbose=0).astype("float64")
    s = student.predict(x, verbose=0).astype("float64")
    kernel = student.get_layer("hidden").get_weights()[0].astype("float64")
    kd = np_kd(t, s, 2.0).mean()
    student_loss = np_scce(s, y).mean()
    expected = 0.3 * student_loss + 0.6 * kd + 0.05 * np.sum(kernel ** 2)
    # `loss` is logged with the terms, by the Distiller's own metric, and
    # again as `total_loss`, the name `keras.distillation` logs it under.
    assert distiller.step_means.names == [
        "loss", "student_loss", "kd", "distillation_loss", "teacher_agreement",
        "total_loss",
    ]
    # The logs of a step are those of the weights it started from.
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "student_loss", "kd", "distillation_loss",
                         "teacher_agreement", "total_loss"}
    assert logs["total_loss"] == logs["loss"]
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(logs["kd"], kd, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-4)
    np.testing.assert_allclose(logs["distillation_loss"], 0.6 * kd, rtol=1e-4)
    # The step moved the student; `evaluate` logs the total of the new weights.
    s = student.predict(x, verbose=0).astype("float64")
    kernel = student.get_layer("hidden").get_weights()[0].astype("float64")
    expected = (0.3 * np_scce(s, y).mean() + 0.6 * np_kd(t, s, 2.0).mean()
                + 0.05 * np.sum(kernel ** 2))
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)


class WeightedSquares(keras_distill.losses.PerSampleLoss):
    """A custom loss: the squared logit difference, scaled by the label + 1
    in training only, from its `LossContext`."""

    def per_sample(self, context):
        squares = keras.ops.mean((context.teacher - context.student) ** 2, -1)
        if context.training:
            labels = keras.ops.cast(keras.ops.reshape(context.labels, (-1,)), "float32")
            squares = squares * (labels + 1.0)
        return squares


def test_a_custom_per_sample_loss_reads_its_context():
    x, y = classification_data(32)
    distiller = make_distiller(WeightedSquares(), student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    weights = np.linspace(0.5, 1.5, 32).astype("float32")
    t = distiller.teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")
    squares = ((t - s) ** 2).mean(-1)
    # Reduced as Keras reduces: sum of weighted values over the batch size.
    logs = distiller.evaluate(x, y, sample_weight=weights, batch_size=32,
                              verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["weighted_squares"], (squares * weights).mean(),
                               rtol=1e-5)
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    np.testing.assert_allclose(logs["weighted_squares"],
                               (squares * (y + 1) * weights).mean(), rtol=1e-5)


def test_default_distillation_weight_is_one_minus_student_weight():
    distiller = make_distiller([KD(), DKD()], student_loss_weight=0.25)
    assert distiller.distillation_loss_weights == [0.75, 0.75]


def test_teacher_never_changes_and_is_not_modified():
    x, y = classification_data(64)
    distiller = make_distiller()
    teacher, student = distiller.teacher, distiller.student
    assert teacher.trainable  # the user's flag, left alone
    before_t = [w.copy() for w in teacher.get_weights()]
    before_s = [w.copy() for w in student.get_weights()]
    distiller.compile(loss=SCCE)
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert teacher.trainable
    for a, b in zip(before_t, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.allclose(a, b) for a, b in zip(before_s, student.get_weights())
    )
    teacher_ids = {id(v) for v in teacher.variables}
    assert not teacher_ids & {id(v) for v in distiller.trainable_variables}
    # KD owns no variable to train: the student's are all there is.
    assert [id(v) for v in distiller.trainable_variables] == [
        id(v) for v in student.trainable_variables
    ]
    # The optimizer holds exactly the slots of those variables: those of a
    # fresh Adam built on them, and none for a teacher variable.
    fresh = keras.optimizers.Adam()
    fresh.build(student.trainable_variables)
    used = distiller.optimizer.inner_optimizer.variables
    assert [(v.name, tuple(v.shape)) for v in used] == [
        (v.name, tuple(v.shape)) for v in fresh.variables
    ]
    assert not any("teacher" in v.name for v in distiller.optimizer.variables)


class CallCounter(keras.layers.Layer):
    """Identity layer that counts how often it runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x


def counted_mlp(width, name):
    counter = CallCounter(name="counter")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            counter,
            keras.layers.Dense(width, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )
    return model, counter


@pytest.mark.parametrize(
    "losses",
    [
        lambda: KD(),
        lambda: [
            KD(),
            keras_distill.FeatureDistillation(
                teacher_layer_name="logits", student_layer_name="logits"
            ),
        ],
    ],
    ids=["logits", "logits_and_features"],
)
def test_each_model_runs_once_per_training_step(losses):
    x, y = classification_data(64)
    teacher, teacher_counter = counted_mlp(16, "teacher")
    student, student_counter = counted_mlp(4, "student")
    distiller = keras_distill.Distiller(teacher, student, losses())
    distiller.compile(loss=SCCE, run_eagerly=True)
    # The first fit also traces each model once, symbolically, to build
    # the metrics; count the steps of a second one.
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    teacher_counter.calls = student_counter.calls = 0
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert teacher_counter.calls == 4
    assert student_counter.calls == 4


def test_class_weight_and_sample_weight_reach_the_distillation_loss():
    x, y = classification_data(64)
    distiller = make_distiller(student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    before = [w.copy() for w in distiller.student.get_weights()]
    # Every class weighs 0: no term may move the student.
    logs = distiller.fit(
        x, y, epochs=1, batch_size=16, verbose=0,
        class_weight={0: 0.0, 1: 0.0, 2: 0.0},
    ).history
    assert logs["kd"][0] == 0.0 and logs["loss"][0] == 0.0
    for a, b in zip(before, distiller.student.get_weights()):
        np.testing.assert_array_equal(a, b)

    weights = np.linspace(0.0, 2.0, 64).astype("float32")
    result = distiller.evaluate(
        x, y, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    t = distiller.teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")
    np.testing.assert_allclose(
        result["kd"], (np_kd(t, s, 2.0) * weights).mean(), rtol=1e-4
    )
    agree = t.argmax(-1) == s.argmax(-1)
    np.testing.assert_allclose(
        result["teacher_agreement"], (agree * weights).sum() / weights.sum(),
        rtol=1e-5,
    )


def test_epoch_logs_weigh_each_batch_by_its_size_and_keep_their_order():
    x, y = classification_data(64)
    distiller = make_distiller([KD(temperature=2.0), DKD()])
    distiller.compile(loss=SCCE, metrics=["accuracy"])
    # Batches of 48 and 16: each term's epoch value is the mean over the
    # samples, not over the batches.
    results = distiller.evaluate(x, y, batch_size=48, verbose=0)
    t = distiller.teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")

    def per_batch_means(values):
        means = np.array([values[:48].mean(), values[48:].mean()])
        return (means * [48, 16]).sum() / 64

    kd = per_batch_means(np_kd(t, s, 2.0))
    student_loss = per_batch_means(np_scce(s, y))
    agreement = (t.argmax(-1) == s.argmax(-1)).mean()
    # The list of `evaluate` comes in the order of the logs.
    names = ["loss", "accuracy", "student_loss", "kd", "dkd",
             "distillation_loss", "teacher_agreement", "total_loss"]
    assert len(results) == len(names)
    logs = dict(zip(names, results))
    np.testing.assert_allclose(logs["kd"], kd, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-4)
    np.testing.assert_allclose(logs["teacher_agreement"], agreement, rtol=1e-6)
    np.testing.assert_allclose(
        logs["distillation_loss"], 0.5 * (logs["kd"] + logs["dkd"]), rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["loss"], 0.5 * student_loss + logs["distillation_loss"], rtol=1e-4
    )
    listed = dict(zip(names, distiller.test_on_batch(x, y)))
    assert listed == pytest.approx(distiller.test_on_batch(x, y, return_dict=True))


def sequence_model(width, name, vocab=12, classes=5):
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(vocab, width, mask_zero=True),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def test_padding_masks_exclude_padded_positions_from_every_term():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 12, size=(16, 6)).astype("int32")
    x[:, 4:] = 0  # the last two positions are padding
    y = rng.integers(0, 5, size=(16, 6))
    distiller = keras_distill.Distiller(
        sequence_model(16, "teacher"), sequence_model(4, "student"),
        KD(temperature=2.0),
    )
    distiller.compile(loss=SCCE)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    t = distiller.teacher.predict(x, verbose=0).astype("float64")[:, :4]
    s = distiller.student.predict(x, verbose=0).astype("float64")[:, :4]
    np.testing.assert_allclose(logs["kd"], np_kd(t, s, 2.0).mean(), rtol=1e-4)
    np.testing.assert_allclose(
        logs["student_loss"], np_scce(s, y[:, :4]).mean(), rtol=1e-4
    )
    distiller.fit(x, y, epochs=1, verbose=0)


def two_headed(width, name):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(
        inputs,
        {
            "species": keras.layers.Dense(3, name="species")(hidden),
            "size": keras.layers.Dense(1, name="size")(hidden),
        },
        name=name,
    )


def test_multi_output_models_distil_the_chosen_output():
    x, y = classification_data(64)
    targets = {"species": y, "size": x[:, :1]}
    distiller = keras_distill.Distiller(
        two_headed(16, "teacher"), two_headed(4, "student"),
        KD(teacher=Output("species"), student=Output("species"), temperature=2.0),
    )
    distiller.compile(loss={"species": SCCE, "size": "mse"})
    history = distiller.fit(x, targets, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["kd"]))
    logs = distiller.evaluate(x, targets, batch_size=64, verbose=0,
                              return_dict=True)
    t = distiller.teacher.predict(x, verbose=0)["species"].astype("float64")
    s = distiller.student.predict(x, verbose=0)["species"].astype("float64")
    np.testing.assert_allclose(logs["kd"], np_kd(t, s, 2.0).mean(), rtol=1e-4)
    agreement = (t.argmax(-1) == s.argmax(-1)).mean()
    np.testing.assert_allclose(logs["teacher_agreement"], agreement, rtol=1e-6)

    with pytest.raises(ValueError, match=r"say which to distil .* e\.g\. "
                       r"teacher=keras_distill\.sources\.Output\("):
        keras_distill.Distiller(
            two_headed(16, "t"), two_headed(4, "s"), KD()
        )
    with pytest.raises(ValueError, match=r"Output\('colour'\) names no output.*available"):
        keras_distill.Distiller(
            two_headed(16, "t"), two_headed(4, "s"),
            KD(teacher=Output("colour"), student=Output("colour")),
        )


def test_old_loss_keywords_warn_and_mean_the_new_sources():
    with pytest.warns(DeprecationWarning, match=r"teacher=Output\('species'\)"):
        old = KD(temperature=2.0, output="species")
    new = KD(teacher=Output("species"), student=Output("species"), temperature=2.0)
    assert old.get_config() == new.get_config()
    with pytest.warns(DeprecationWarning) as record:
        old = FitNet(teacher_layer="hidden", student_layer="hidden")
    assert sorted(str(w.message).split(")")[0] for w in record) == [
        "FitNet(student_layer=...", "FitNet(teacher_layer=...",
    ]
    assert old.get_config() == FitNet("hidden", "hidden").get_config()
    # Hyperparameters are keywords: a positional one is taken for a source.
    with pytest.raises(TypeError, match=r"keyword arguments, e\.g\. KD\(temperature="):
        KD(2.0)


def test_bfloat16_teacher_teaches_a_float32_student():
    x, y = classification_data(64)
    teacher = mlp(32, name="teacher")
    bf16_teacher = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", dtype="bfloat16"),
            keras.layers.Dense(3, dtype="bfloat16"),
        ]
    )
    bf16_teacher.set_weights(teacher.get_weights())
    distiller = keras_distill.Distiller(bf16_teacher, mlp(4), KD(temperature=2.0))
    distiller.compile(loss=SCCE)
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    t = bf16_teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")
    np.testing.assert_allclose(logs["kd"], np_kd(t, s, 2.0).mean(), rtol=1e-3)


def test_subclassed_teacher_and_student():
    x, y = classification_data(64)
    teacher, student = SubclassedClassifier(16), SubclassedClassifier(4)
    teacher(x[:1]), student(x[:1])
    distiller = keras_distill.Distiller(teacher, student, KD())
    distiller.compile(loss=SCCE)
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["kd"]))
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), student.predict(x, verbose=0),
        rtol=1e-6,
    )


def test_student_only_from_the_teacher_needs_no_compiled_loss():
    x, y = classification_data(64)
    distiller = make_distiller(student_loss_weight=0.0)
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, epochs=2, verbose=0).history
    assert history["student_loss"] == [0.0, 0.0]
    assert history["kd"][1] < history["kd"][0]


def test_saved_distiller_resumes_training(tmp_path):
    x, y = classification_data(64)
    distiller = make_distiller([KD(temperature=3.0), DKD()])
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=SCCE, metrics=["accuracy"]
    )
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    distiller.distillation_losses[0].temperature = 5.0
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_distill.Distiller)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert loaded.distillation_losses[0].temperature == 5.0
    for a, b in zip(distiller.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-5)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 8


def test_config_round_trip():
    distiller = make_distiller(
        [KD(temperature=3.0, divergence="js"), DKD(beta=2.0)],
        distillation_loss_weights=[0.2, 0.7],
        student_loss_weight=0.4,
    )
    restored = keras_distill.Distiller.from_config(distiller.get_config())
    assert restored.get_config()["distillation_loss_weights"] == [
        pytest.approx(0.2), pytest.approx(0.7)
    ]
    assert [l.get_config() for l in restored.distillation_losses] == [
        l.get_config() for l in distiller.distillation_losses
    ]
    assert restored.student_loss_weight == 0.4


def test_export_student_writes_the_student_alone(tmp_path):
    x, y = classification_data(64)
    distiller = make_distiller()
    distiller.compile(loss=SCCE)
    distiller.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    distiller.export_student(path)
    student = keras.saving.load_model(path)
    assert len(student.weights) == len(distiller.student.weights)
    np.testing.assert_allclose(
        student.predict(x, verbose=0), distiller.predict(x, verbose=0),
        rtol=1e-6,
    )
    size = os.path.getsize(path)
    with pytest.raises(ValueError, match="overwrite=True"):
        distiller.export_student(path)
    assert os.path.getsize(path) == size
    with pytest.raises(ValueError, match=".keras"):
        distiller.export_student(tmp_path / "student.h5")
    distiller.export_student(path, overwrite=True)


def nan_teacher_distiller():
    """A teacher whose weights are finite but whose logits overflow to
    infinity (and so its KD targets to NaN)."""
    distiller = make_distiller()
    weights = distiller.teacher.get_weights()
    weights[-2][:] = 3e38 * np.sign(weights[-2])  # the output kernel
    distiller.teacher.set_weights(weights)
    distiller.compile(loss=SCCE)
    return distiller


@pytest.mark.parametrize("entry", ["fit", "evaluate", "train_on_batch"])
def test_nan_teacher_weights_are_refused_before_any_step(entry):
    x, y = classification_data(32)
    distiller = make_distiller()
    weights = distiller.teacher.get_weights()
    # The first kernel, before a ReLU: on TensorFlow, ReLU maps NaN to 0 and
    # the teacher's outputs are finite, constant and wrong.
    weights[0][0, 0] = np.nan
    distiller.teacher.set_weights(weights)
    distiller.compile(loss=SCCE)
    before = distiller.student.get_weights()
    run = {
        "fit": lambda: distiller.fit(x, y, verbose=0),
        "evaluate": lambda: distiller.evaluate(x, y, verbose=0),
        "train_on_batch": lambda: distiller.train_on_batch(x, y),
    }[entry]
    with pytest.raises(ValueError, match=r"teacher's weights \['.*kernel'\] hold NaN"):
        run()
    assert_same_weights(distiller.student.get_weights(), before)


def assert_same_weights(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def non_finite_names(message):
    """The names a non-finite error lists, as a set."""
    assert "were NaN or infinite" in message, message
    listed = message.split("The logged ")[1].split(" were NaN")[0]
    return set(listed.split(", "))


def test_nan_teacher_outputs_stop_fit_after_the_first_batch():
    x, y = classification_data(64)
    distiller = nan_teacher_distiller()
    before = distiller.student.get_weights()
    with pytest.raises(ValueError, match="during the first batch") as error:
        distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    message = str(error.value)
    # The terms the teacher reaches; the label loss is finite, so the
    # message points at the teacher.
    assert non_finite_names(message) == {"loss", "kd", "distillation_loss", "total_loss"}
    assert "check the teacher" in message
    # The step that saw the NaN applied nothing: the student's weights and
    # the optimizer's state are as they were (one of four steps ran).
    assert_same_weights(distiller.student.get_weights(), before)
    assert int(distiller.optimizer.iterations.numpy()) == 0
    moments = [
        v for v in distiller.optimizer.inner_optimizer.variables
        if "momentum" in v.name or "velocity" in v.name
    ]
    assert moments and not any(np.any(to_np(v)) for v in moments)  # Adam's, still 0


@pytest.mark.parametrize("entry", ["evaluate", "train_on_batch", "test_on_batch"])
def test_nan_teacher_outputs_stop_every_entry_point(entry):
    x, y = classification_data(32)
    distiller = nan_teacher_distiller()
    run = {
        "evaluate": lambda: distiller.evaluate(x, y, batch_size=16, verbose=0),
        "train_on_batch": lambda: distiller.train_on_batch(x, y),
        "test_on_batch": lambda: distiller.test_on_batch(x, y),
    }[entry]
    before = distiller.student.get_weights()
    with pytest.raises(ValueError, match=f"during {entry}") as error:
        run()
    assert_same_weights(distiller.student.get_weights(), before)
    message = str(error.value)
    assert non_finite_names(message) == {"loss", "kd", "distillation_loss", "total_loss"}
    assert "check the teacher" in message


def test_infinite_inputs_point_at_the_data_not_the_teacher():
    x, y = classification_data(32)
    x[3, 0] = np.inf  # (a ReLU may turn NaN into 0 on some backends)
    distiller = make_distiller()
    distiller.compile(loss=SCCE)
    with pytest.raises(ValueError, match="during train_on_batch") as error:
        distiller.train_on_batch(x, y)
    message = str(error.value)
    assert "student_loss" in non_finite_names(message)
    assert "Check the data" in message and "teacher" not in message
    # A finite batch passes the same checks.
    distiller = make_distiller()
    distiller.compile(loss=SCCE)
    x[3, 0] = 0.0
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(float(v)) for v in logs.values())


def test_keras_distillation_script_runs_after_changing_its_import():
    """The same script, written against `keras.distillation`'s API."""

    def script(module):
        x, y = classification_data(64)
        teacher, student = mlp(16, name="teacher"), mlp(16, name="student")
        distiller = module.Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=[
                module.LogitsDistillation(temperature=3.0),
                module.FeatureDistillation(
                    loss="mse",
                    teacher_layer_name="hidden",
                    student_layer_name="hidden",
                ),
            ],
            distillation_loss_weights=[1.0, 0.5],
            student_loss_weight=0.5,
        )
        distiller.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        distiller.fit(x, y, epochs=1, verbose=0)
        return distiller.student.predict(x, verbose=0)

    assert np.all(np.isfinite(script(keras.distillation)))
    assert np.all(np.isfinite(script(keras_distill)))


# -- Bad input ---------------------------------------------------------------


def test_a_two_output_teacher_teaches_a_one_output_student():
    x, y = classification_data(32)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    teacher = keras.Model(inputs, [keras.layers.Dense(3)(hidden), keras.layers.Dense(2)(hidden)])
    student = mlp(4)
    # What the first error suggests for this pair, works.
    with pytest.raises(ValueError, match=r"teacher=keras_distill\.sources\.Output\(0\) when the teacher has several"):
        keras_distill.Distiller(teacher, student, KD())
    with pytest.raises(ValueError, match=r"a single tensor\. A model with one output needs no key.*KD\(teacher=Output\(0\)\)"):
        keras_distill.Distiller(teacher, student, KD(teacher=Output(0), student=Output(0)))
    distiller = keras_distill.Distiller(teacher, student, KD(teacher=Output(0), temperature=2.0))
    distiller.compile(loss=SCCE)
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    t = to_np(teacher(x)[0]).astype("float64")
    np.testing.assert_allclose(logs["kd"], np_kd(t, to_np(student(x)), 2.0).mean(), rtol=1e-4)


def test_models_must_be_built_keras_models():
    with pytest.raises(ValueError, match="must be a keras.Model"):
        keras_distill.Distiller(keras.layers.Dense(3), mlp(4), KD())
    model = mlp(4)
    with pytest.raises(ValueError, match="same model object"):
        keras_distill.Distiller(model, model, KD())


def test_weights_must_match_the_losses():
    with pytest.raises(ValueError, match="2 distillation_loss_weights for 1"):
        make_distiller(KD(), distillation_loss_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        make_distiller(KD(), student_loss_weight=-1.0)
    with pytest.raises(ValueError, match="Pass distillation_loss_weights"):
        make_distiller(KD(), student_loss_weight=2.0)
    with pytest.raises(ValueError, match="same loss object"):
        kd = KD()
        make_distiller([kd, kd])
    with pytest.raises(ValueError, match="named 'student_loss', which the Distiller"):
        make_distiller(KD(name="student_loss"))


def test_losses_must_be_distillation_losses():
    with pytest.raises(TypeError, match="not a keras_distill distillation loss"):
        make_distiller(keras.losses.MeanSquaredError())
    with pytest.raises(TypeError, match="KD"):
        make_distiller(keras.distillation.LogitsDistillation())
    with pytest.raises(ValueError, match="is None"):
        keras_distill.Distiller(mlp(16), mlp(4), None)


class Eager(keras.Model):
    """A subclassed classifier that builds its layers itself: its input
    shape is not known to Keras, so no symbolic pass can be inferred."""

    def __init__(self, width, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="relu", name="hidden")
        self.logits = keras.layers.Dense(classes, name="logits")
        self.hidden.build((None, 8))
        self.logits.build((None, width))
        self.built = True

    def call(self, x):
        return self.logits(self.hidden(x))


def test_class_counts_must_match():
    # Caught when the Distiller is built, from the inferred output shapes,
    # for Sequential and subclassed models alike.
    with pytest.raises(ValueError, match="teacher gives 3 .* student 5"):
        keras_distill.Distiller(mlp(16), mlp(4, num_classes=5), KD())
    x, y = classification_data(64)
    teacher, student = SubclassedClassifier(16), keras.Sequential(
        [keras.layers.Dense(5)]
    )
    teacher(x[:1]), student(x[:1])
    with pytest.raises(ValueError, match="teacher gives 3 .* student 5"):
        keras_distill.Distiller(teacher, student, KD())
    # Models whose input shape is unknown: caught when the step is traced.
    distiller = keras_distill.Distiller(Eager(16), Eager(4, classes=5), KD())
    distiller.compile(loss=SCCE)
    with pytest.raises(ValueError, match="teacher gives 3 .* student 5"):
        distiller.fit(x, y, epochs=1, verbose=0)
    # Which cannot size a loss's own layers before training.
    with pytest.raises(ValueError, match="FitNet sizes its own layers"):
        keras_distill.Distiller(Eager(16), Eager(4), FitNet("hidden", "hidden"))


def test_compile_needs_a_loss_while_the_student_loss_counts():
    distiller = make_distiller()
    with pytest.raises(ValueError, match="student_loss_weight=0"):
        distiller.compile(optimizer="adam")


def test_unknown_feature_layer_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Available layer paths: \[.hidden., .logits.\]"):
        make_distiller(
            keras_distill.FeatureDistillation(
                teacher_layer_name="hiden", student_layer_name="hidden"
            )
        )


def test_agreement_is_reported_only_with_a_loss_on_class_scores():
    x, y = classification_data(64)
    features_only = make_distiller(
        keras_distill.FeatureDistillation(
            teacher_layer_name="logits", student_layer_name="logits"
        )
    )
    features_only.compile(loss=SCCE)
    logs = features_only.evaluate(x, y, verbose=0, return_dict=True)
    assert "teacher_agreement" not in logs
    assert "feature_distillation" in logs


class FiniteValueNaNGradient(keras_distill.losses.PerSampleLoss):
    """0 in value, NaN in gradient: sqrt at exactly 0 (of a square)."""

    def per_sample(self, context):
        gap = context.student[:, 0] - ops.stop_gradient(context.student[:, 0])
        return ops.sqrt(ops.square(gap))


@pytest.mark.parametrize("entry", ["fit", "train_on_batch"])
def test_a_step_with_nan_gradients_and_finite_logs_is_skipped_and_named(entry):
    x, y = classification_data(32)
    distiller = keras_distill.Distiller(mlp(16), mlp(4), [KD(), FiniteValueNaNGradient()])
    distiller.compile(loss=SCCE)
    before = distiller.student.get_weights()
    run = {
        "fit": lambda: distiller.fit(x, y, batch_size=16, verbose=0),
        "train_on_batch": lambda: distiller.train_on_batch(x, y),
    }[entry]
    with pytest.raises(ValueError, match=r"training step\(s\) had NaN or infinite gradients"):
        run()
    assert_same_weights(distiller.student.get_weights(), before)
    assert int(to_np(distiller.optimizer.skipped_steps)) >= 1
    assert int(to_np(distiller.optimizer.iterations)) == 0
