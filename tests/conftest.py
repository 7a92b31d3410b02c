"""Shared test set-up: the backend under test and small models.

The suite runs once per backend, chosen by KERAS_BACKEND; it refuses to run
on an unset or unknown backend rather than silently testing the default.
"""

import os


def _share_the_cores_among_workers():
    """Gives each pytest-xdist worker its share of the cores for math.

    PyTorch's OpenMP pool and TensorFlow's intra-op pool each take every
    core; with two workers (and the scripts they start, which inherit the
    environment) on two cores, the pools fought over them: two MNIST runs
    side by side took 303 s on PyTorch, against 100 s with one thread each.
    Set before the backends are imported; a value set by the caller wins.
    JAX is left alone: XLA's CPU client has no flag that limits its pool.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)


_share_the_cores_among_workers()

import numpy as np  # noqa: E402  (after the thread counts: BLAS reads them)
import pytest  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
if os.environ.get("KERAS_BACKEND") not in BACKENDS:
    raise pytest.UsageError(
        f"Set KERAS_BACKEND to one of {BACKENDS} (e.g. KERAS_BACKEND=jax "
        "pytest); the suite runs once per backend."
    )

import keras  # noqa: E402  (after the backend check)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def mlp(width, num_classes=3, input_dim=8, name=None, dropout=0.0):
    """A small Sequential classifier returning logits."""
    layers = [
        keras.Input((input_dim,)),
        keras.layers.Dense(width, activation="relu", name="hidden"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)


class SubclassedClassifier(keras.Model):
    """A subclassed classifier: no symbolic inputs, built when first called."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.logits = keras.layers.Dense(3)

    def call(self, x):
        return self.logits(self.hidden(x))


def classification_data(n=64, input_dim=8, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, input_dim)).astype("float32")
    y = rng.integers(0, num_classes, n)
    return x, y
