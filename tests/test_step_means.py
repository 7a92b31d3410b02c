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


def test_one_weight_applies_to_every_name():
    means = StepMeans(["a", "b", "c"])
    means.update_state([1.0, 2.0, 3.0], 2.0)
    means.update_state([3.0, -2.0, 0.5], keras.ops.convert_to_tensor(6.0))
    # Per name: (2 v1 + 6 v2) / 8.
    expected = (2 * np.array([1.0, 2.0, 3.0]) + 6 * np.array([3.0, -2.0, 0.5])) / 8
    result = means.result()
    assert list(result) == ["a", "b", "c"]
    np.testing.assert_allclose([float(v) for v in result.values()], expected, rtol=1e-6)
    # The same as giving the weight once per name.
    listed = StepMeans(["a", "b", "c"])
    listed.update_state([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    listed.update_state([3.0, -2.0, 0.5], [6.0, 6.0, 6.0])
    np.testing.assert_allclose(
        [float(v) for v in listed.result().values()], expected, rtol=1e-6
    )


def test_small_weights_are_divided_by_not_floored():
    # Only a count of exactly 0 is spared the division (its total is 0 too);
    # a small positive count is a plain weighted mean.
    means = StepMeans(["a", "b"])
    means.update_state([4.0, 7.0], [1e-6, 0.0])
    result = {k: float(v) for k, v in means.result().items()}
    assert result["a"] == pytest.approx(4.0, rel=1e-5)
    assert result["b"] == 0.0
