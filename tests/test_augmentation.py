"""Tests of `Distiller(augmentation=...)`: one augmented view for teacher and
student in training steps, the data as given elsewhere."""

import os

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import assert_close
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="keras_distill_tests")
class Noise(keras.layers.Layer):
    """Adds fresh Gaussian noise in training: a stand-in for augmentation."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.seed = keras.random.SeedGenerator(0)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        noise = keras.random.normal(keras.ops.shape(inputs), seed=self.seed)
        return inputs + self.scale * noise

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def twins():
    """A teacher and a student with equal weights."""
    teacher = mlp(8, name="teacher")
    student = mlp(8, name="student")
    student.set_weights(teacher.get_weights())
    return teacher, student


def frozen_fit(distiller, x, y):
    """Trains with learning rate 0, so the twins stay equal; returns logs."""
    distiller.compile(keras.optimizers.SGD(0.0), SCCE)
    return distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history


def test_teacher_and_student_see_the_same_augmented_view():
    x, y = classification_data(64)
    teacher, student = twins()
    shared = keras_distill.Distiller(teacher, student, KD(temperature=2.0), augmentation=Noise())
    assert frozen_fit(shared, x, y)["kd"][0] == pytest.approx(0.0, abs=1e-6)

    # The control: noise seen by the student alone makes the twins disagree.
    teacher, student = twins()
    noisy_student = keras.Sequential([keras.Input((8,)), Noise(), student])
    apart = keras_distill.Distiller(teacher, noisy_student, KD(temperature=2.0))
    assert frozen_fit(apart, x, y)["kd"][0] > 1e-3


def test_keras_shifts_and_mixup_give_one_view():
    """The function-matching pipeline of `examples/mnist_patient.py`: Keras's
    random translation and mixup layers, drawn once per step for both."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=64)

    def image_mlp(name):
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)],
            name=name,
        )

    teacher, student = image_mlp("teacher"), image_mlp("student")
    pipeline = keras.Sequential(
        [keras.layers.RandomTranslation(0.25, 0.25), keras.layers.MixUp(alpha=1.0)]
    )
    shared = keras_distill.Distiller(teacher, student, KD(), augmentation=pipeline)
    assert frozen_fit(shared, x, y)["kd"][0] == pytest.approx(0.0, abs=1e-6)

    # The control: the same pipeline drawn for the student alone.
    alone = keras.Sequential([keras.Input((8, 8, 1)), pipeline, image_mlp("student")])
    apart = keras_distill.Distiller(image_mlp("teacher"), alone, KD())
    assert frozen_fit(apart, x, y)["kd"][0] > 1e-3


def test_the_views_are_random_and_only_in_training():
    x, y = classification_data(64)
    teacher, student = twins()
    distiller = keras_distill.Distiller(
        teacher, student, KD(temperature=2.0), augmentation=Noise(scale=5.0)
    )
    distiller.compile(keras.optimizers.Adam(0.01), SCCE)
    clean = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert clean["kd"] == pytest.approx(0.0, abs=1e-6)
    assert_close(distiller.predict(x, verbose=0), to_np(student(x)))
    first = to_np(distiller(x, training=True))
    second = to_np(distiller(x, training=True))
    assert not np.allclose(first, second)  # a new view on every call


def test_a_preprocessing_pipeline_on_images_trains_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 3, 32)

    def cnn(name):
        return keras.Sequential([
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ], name=name)

    augmentation = keras.Sequential([
        keras.layers.RandomTranslation(0.1, 0.1, seed=1),
        keras.layers.RandomFlip("horizontal", seed=2),
    ], name="augment")
    distiller = keras_distill.Distiller(
        cnn("teacher"), cnn("student"), KD(temperature=2.0), augmentation=augmentation
    )
    distiller.compile(keras.optimizers.Adam(0.01), SCCE)
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    path = os.path.join(tmp_path, "augmented.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(l).__name__ for l in loaded.augmentation.layers] == [
        "RandomTranslation", "RandomFlip"
    ]
    assert_close(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))


def test_augmentation_must_be_callable():
    teacher, student = twins()
    with pytest.raises(TypeError, match="Keras layer or a callable"):
        keras_distill.Distiller(teacher, student, KD(), augmentation="flip")
