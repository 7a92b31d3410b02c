"""StepMeans: the Distiller's logged scalars in one metric."""

import keras
import numpy as np
import pytest

from keras_distill.step_means import StepMeans


def test_results_are_weighted_means_since_the_last_reset():
    means = StepMeans(["a", "b", "c"])
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 3)).astype("float32")
    weights = rng.uniform(0, 4, size=(5, 3)).astype("float32")
    weights[:, 2] = 0.0  # never weighted: 0, as keras.metrics.Mean gives
    for v, w in zip(values, weights):
        means.update_state(list(v), list(w))
    result = {k: float(v) for k, v in means.result().items()}
    assert list(result) == ["a", "b", "c"]
    expected = (values * weights).sum(0) / np.maximum(weights.sum(0), 1e-30)
    np.testing.assert_allclose(
        [result["a"], result["b"]], expected[:2], rtol=1e-5
    )
    assert result["c"] == 0.0

    reference = keras.metrics.Mean()
    for v, w in zip(values[:, 0], weights[:, 0]):
        reference.update_state(v, sample_weight=w)
    np.testing.assert_allclose(result["a"], float(reference.result()), rtol=1e-5)

    means.reset_state()
    means.update_state([1.0, 2.0, 3.0], [2, 2, 2])
    assert [float(v) for v in means.result().values()] == [1.0, 2.0, 3.0]


def test_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct names"):
        StepMeans(["kd", "kd"])
