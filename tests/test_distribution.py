"""A distributed step equals a single-device step, on each backend's own path.

JAX: `keras.distribution.DataParallel` over 4 virtual CPU devices, and
`ModelParallel` with the teacher's kernels split over a "model" axis.
TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPUs. PyTorch:
`DistributedDataParallel` over 2 CPU processes (gloo). The devices must be
set before the backend initialises, so each run is a fresh process of
`tests/distributed_step.py`, which takes one SGD step of a `Distiller` (and,
where `fit` runs the step, of `MutualLearning`) on the same global batch of
8 on one device and distributed, and saves both results.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_step.py")
BACKEND = keras.backend.backend()
MODES = {
    "jax": ["data_parallel", "model_parallel"],
    "tensorflow": ["mirrored"],
    "torch": ["ddp"],
}[BACKEND]
EXPECTED_LOGS = {
    "distiller": {"loss", "student_loss", "kd", "fit_net", "distillation_loss",
                  "teacher_agreement"},
    "mutual_learning": {"loss", "peer_1_loss", "peer_2_loss", "peer_1_kd",
                        "peer_2_kd"},
}


def run_step(mode, tmp_path):
    out = tmp_path / "step.npz"
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    result = subprocess.run(
        [sys.executable, SCRIPT, mode, str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(np.load(out))


def weights(result, kind, run):
    count = sum(k.startswith(f"{kind}_initial_weight_") for k in result)
    return [result[f"{kind}_{run}_weight_{i}"] for i in range(count)]


@pytest.mark.parametrize("mode", MODES)
def test_a_distributed_step_matches_a_single_device_step(mode, tmp_path):
    result = run_step(mode, tmp_path)
    assert int(result["devices"]) >= 2
    kinds = sorted({k.split("_single_logs")[0] for k in result if "_single_logs" in k})
    assert "distiller" in kinds
    for kind in kinds:
        single = dict(zip(result[f"{kind}_single_log_names"].tolist(),
                          result[f"{kind}_single_logs"]))
        parallel = dict(zip(result[f"{kind}_parallel_log_names"].tolist(),
                            result[f"{kind}_parallel_logs"]))
        assert EXPECTED_LOGS[kind] <= set(single), sorted(single)
        for key in EXPECTED_LOGS[kind]:
            np.testing.assert_allclose(
                parallel[key], single[key], rtol=1e-5, atol=1e-6,
                err_msg=f"{kind} {mode}: logged {key}",
            )
        initial = weights(result, kind, "initial")
        for i, (before, one, many) in enumerate(zip(
            initial, weights(result, kind, "single"), weights(result, kind, "parallel")
        )):
            # The step moves every weight by far more than the tolerance.
            assert np.abs(one - before).max() > 1e-2, (kind, i)
            np.testing.assert_allclose(
                many, one, rtol=1e-5, atol=1e-6,
                err_msg=f"{kind} {mode}: student weight {i}",
            )
    if BACKEND == "jax":  # the variables really live on every device
        assert int(result["distiller_student_kernel_devices"]) == 4
    if mode == "model_parallel":
        # The teacher's (8, 16) hidden kernel is split over "model" (2 ways)
        # and replicated over "batch"; the student's is replicated.
        assert result["distiller_teacher_kernel_shard_shapes"].tolist() == [[8, 8]] * 4
        assert result["distiller_student_kernel_shard_shapes"].tolist() == [[8, 8]] * 4
