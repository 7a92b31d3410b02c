"""Tests of `MutualLearning`: the loss against NumPy, each peer's update
against a Distiller step, per-peer logs, schedules, saving and bad input."""

import os

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.callbacks import LossWeightScheduler
from keras_distill.callbacks import TemperatureScheduler
from keras_distill.losses import KD
from keras_distill.losses import FitNet
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import assert_close
from tests.reference import np_log_softmax
from tests.reference import ref_kd
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def peers(count=3):
    return [mlp(4 + 2 * i, name=f"peer_{i}") for i in range(count)]


def compiled(models, optimizer="adam", metrics=None, **kwargs):
    model = keras_distill.MutualLearning(models, **kwargs)
    model.compile(optimizer=optimizer, loss=SCCE, metrics=metrics)
    return model


def np_cross_entropy(logits, labels):
    return -np_log_softmax(logits)[np.arange(len(labels)), labels]


def test_loss_is_each_peers_cross_entropy_plus_its_mean_kl_to_the_others():
    x, y = classification_data(40)
    weights = np.linspace(0.0, 2.0, 40)
    models = peers(3)
    model = compiled(
        models, distillation_loss=KD(temperature=2.0), distillation_loss_weight=0.7,
        student_loss_weight=0.4,
    )
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=40, verbose=0, return_dict=True
    )
    outputs = [to_np(m(x)) for m in models]
    total = 0.0
    for k, student in enumerate(outputs):
        supervised = np.mean(weights * np_cross_entropy(student, y))
        kl = np.mean([
            np.mean(weights * ref_kd(teacher, student, temperature=2.0))
            for j, teacher in enumerate(outputs) if j != k
        ])
        assert logs[f"peer_{k}_loss"] == pytest.approx(supervised, rel=1e-4)
        assert logs[f"peer_{k}_kd"] == pytest.approx(kl, rel=1e-4)
        total += 0.4 * supervised + 0.7 * kl
    assert logs["loss"] == pytest.approx(total, rel=1e-4)


def test_two_peers_each_take_the_step_of_a_distiller_from_the_other():
    """With two peers, DML's update of each peer is a Distiller step with
    the other peer, as it was before the step, as a frozen teacher."""
    x, y = classification_data(32)
    a, b = mlp(6, name="a"), mlp(5, name="b")

    def copy(model):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    expected = {}
    for student, teacher in ((a, b), (b, a)):
        distiller = keras_distill.Distiller(
            copy(teacher), copy(student), KD(temperature=1.0),
            distillation_loss_weights=[1.0], student_loss_weight=1.0,
        )
        distiller.compile(keras.optimizers.SGD(0.5), loss=SCCE)
        distiller.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        expected[student.name] = distiller.student.get_weights()

    model = compiled([a, b], optimizer=keras.optimizers.SGD(0.5))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for peer in (a, b):
        for actual, wanted in zip(peer.get_weights(), expected[peer.name]):
            assert_close(actual, wanted, rtol=1e-4, atol=1e-6)


def test_fit_logs_every_peer_and_training_lowers_their_losses():
    x, y = classification_data(96)
    model = compiled(
        peers(2), optimizer=keras.optimizers.Adam(0.02),
        metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0).history
    for peer in ("peer_0", "peer_1"):
        for name in ("loss", "kd", "accuracy", "acc"):
            assert f"{peer}_{name}" in history, sorted(history)
        assert history[f"{peer}_loss"][-1] < history[f"{peer}_loss"][0]
        # Each peer's metric object is its own, so their values differ.
        assert history[f"{peer}_accuracy"] == history[f"{peer}_acc"]
    assert history["peer_0_accuracy"] != history["peer_1_accuracy"]
    predictions = model.predict(x[:5], verbose=0)
    assert set(predictions) == {"peer_0", "peer_1"}
    assert predictions["peer_0"].shape == (5, 3)


def test_weighted_metrics_apply_to_each_peer_with_the_sample_weights():
    x, y = classification_data(32)
    weights = (np.arange(32) % 2).astype("float32")
    models = peers(2)
    model = keras_distill.MutualLearning(models)
    model.compile(loss=SCCE, weighted_metrics=["accuracy"])
    logs = model.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    for peer in models:
        kept = weights > 0
        expected = np.mean(to_np(peer(x[kept])).argmax(-1) == y[kept])
        assert logs[f"{peer.name}_accuracy"] == pytest.approx(expected)


def test_a_zero_weighted_distillation_term_leaves_independent_training():
    x, y = classification_data(32)
    a, b = mlp(6, name="a"), mlp(5, name="b")
    alone = keras.models.clone_model(a)
    alone.set_weights(a.get_weights())
    alone.compile(keras.optimizers.SGD(0.5), loss=SCCE)
    alone.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)

    model = compiled([a, b], optimizer=keras.optimizers.SGD(0.5),
                     distillation_loss_weight=0.0)
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for actual, wanted in zip(a.get_weights(), alone.get_weights()):
        assert_close(actual, wanted, rtol=1e-4, atol=1e-6)


def test_loss_weight_scheduler_sets_the_distillation_weight():
    x, y = classification_data(32)
    model = compiled(peers(2))
    schedule = LossWeightScheduler(lambda epoch: 0.25 * epoch, loss="kd")
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[schedule]).history
    assert history["kd_weight"] == [0.0, 0.25]
    assert model.distillation_loss_weights == [0.25]


def test_epoch_logs_weigh_each_batch_by_its_size():
    x, y = classification_data(32)
    models = peers(2)
    model = compiled(models, distillation_loss=KD(temperature=2.0),
                     student_loss_weight=0.5, distillation_loss_weight=2.0)
    # Batches of 24 and 8: each logged value is the mean over the samples
    # of the per-batch values, each batch weighted by its size.
    logs = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    assert model.step_means.names == ["loss", "peer_0_kd", "peer_1_kd", "total_loss"]
    assert logs["total_loss"] == logs["loss"]
    outputs = [to_np(m(x)).astype("float64") for m in models]

    def over_batches(values):
        means = np.array([values[:24].mean(), values[24:].mean()])
        return (means * [24, 8]).sum() / 32

    per_batch_total = np.zeros(2)
    for k, (student, teacher) in enumerate([outputs, outputs[::-1]]):
        kd = ref_kd(teacher, student, temperature=2.0)
        assert logs[f"peer_{k}_kd"] == pytest.approx(over_batches(kd), rel=1e-4)
        ce = np_cross_entropy(student, y)
        per_batch_total += [
            0.5 * ce[:24].mean() + 2.0 * kd[:24].mean(),
            0.5 * ce[24:].mean() + 2.0 * kd[24:].mean(),
        ]
    assert logs["loss"] == pytest.approx(
        (per_batch_total * [24, 8]).sum() / 32, rel=1e-4
    )


def test_temperature_scheduler_sets_the_peers_loss_temperature():
    x, y = classification_data(32)
    model = compiled(peers(2), distillation_loss=KD(temperature=4.0))
    assert model.schedulable_variables()["temperature"] == {
        "kd": model.distillation_losses[0].schedulable_variables()["temperature"]
    }
    schedule = TemperatureScheduler(lambda epoch: [3.0, 1.5][epoch])
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[schedule]).history
    assert history["temperature"] == [3.0, 1.5]
    assert model.distillation_losses[0].temperature == 1.5


def test_a_nan_peer_stops_training_with_a_clear_error():
    x, y = classification_data(32)
    models = peers(2)
    weights = models[1].get_weights()
    weights[-1][:] = np.nan
    models[1].set_weights(weights)
    model = compiled(models)
    with pytest.raises(ValueError, match="were NaN or infinite during the first batch"):
        model.fit(x, y, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="during train_on_batch") as error:
        model.train_on_batch(x, y)
    # Every logged term the NaN peer reaches is named, the total included.
    listed = str(error.value).split("The logged ")[1].split(" were NaN")[0]
    assert {"loss", "peer_0_kd", "peer_1_kd"} <= set(listed.split(", "))
    with pytest.raises(ValueError, match="during evaluate"):
        model.evaluate(x, y, verbose=0)


def test_save_and_load_keep_the_peers_and_the_loss(tmp_path):
    x, y = classification_data(32)
    model = compiled(peers(2), distillation_loss=KD(temperature=3.0),
                     metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "mutual.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.peer_names == ["peer_0", "peer_1"]
    assert loaded.distillation_losses[0].temperature == 3.0
    for name in ("peer_0", "peer_1"):
        assert_close(loaded.predict(x, verbose=0)[name],
                     model.predict(x, verbose=0)[name])
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True)
    )
    loaded.fit(x, y, epochs=1, verbose=0)  # the optimizer state loads too


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="two or more peers"):
        keras_distill.MutualLearning([mlp(4, name="only")])
    same = mlp(4, name="same")
    with pytest.raises(ValueError, match="same model object"):
        keras_distill.MutualLearning([same, same])
    with pytest.raises(ValueError, match="distinct names"):
        keras_distill.MutualLearning([mlp(4, name="p"), mlp(5, name="p")])
    with pytest.raises(ValueError, match="same shape"):
        keras_distill.MutualLearning(
            [mlp(4, name="three"), mlp(4, num_classes=5, name="five")]
        )
    with pytest.raises(TypeError, match="compares the peers' outputs"):
        keras_distill.MutualLearning(peers(2), distillation_loss=FitNet("hidden", "hidden"))
    with pytest.raises(ValueError, match="not built"):
        keras_distill.MutualLearning(
            [mlp(4, name="a"), keras.Sequential([keras.layers.Dense(3)], name="b")]
        )
    model = keras_distill.MutualLearning(peers(2))
    with pytest.raises(ValueError, match="no `loss`"):
        model.compile(optimizer="adam")
