"""The speed benchmark: its bare KD step is our KD loss, and the script runs end
to end (tiny sizes: the timings are not checked)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "speed.py"
)
sys.path.insert(0, os.path.dirname(SCRIPT))
import speed  # noqa: E402


def run(*args):
    result = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]  # what went wrong, in the log
    return json.loads(result.stdout)


@pytest.mark.slow
def test_speed_benchmark_prints_every_variant_ratio_and_target():
    report = run("--steps", "2", "--repeats", "1", "--no-memory")
    assert report["backend"] == keras.backend.backend()
    assert report["versions"]["keras"] == keras.__version__
    assert report["dtype_policy"] == "float32" and report["devices"]
    assert set(report["cases"]) == {"mnist_mlp", "fashion_cnn"}
    for case in report["cases"].values():
        assert set(case["step_ms"]) == {
            "plain", "plain_with_teacher", "minimal_kd", "keras_logits", "ours_kd",
            "keras_feature", "ours_feature", "ours_fitnet_kd", "ours_relation",
            "ours_precomputed",
        }
        assert all(t > 0 for t in case["step_ms"].values())
        assert set(case["targets"]) == {
            "logits_ours_over_keras", "feature_ours_over_keras",
            "precomputed_over_plain", "overhead_beyond_teacher_over_plain",
        }
        for target in case["targets"].values():
            assert target["met"] == (target["value"] <= target["at_most"])
        assert case["ratios"]["logits_ours_over_keras"] == pytest.approx(
            case["step_ms"]["ours_kd"] / case["step_ms"]["keras_logits"], abs=2e-3
        )
        assert case["kd_loss_ms"] == pytest.approx(
            case["step_ms"]["minimal_kd"] - case["step_ms"]["plain_with_teacher"],
            abs=2e-3,
        )
        assert case["params"]["teacher"] > case["params"]["student"] > 0
        assert "memory_mb" not in case


def test_minimal_kd_computes_the_loss_of_ours_kd():
    """The benchmark's bare KD step is the same loss, only without the logs."""
    rng = np.random.default_rng(0)
    case = dict(
        x=rng.normal(size=(64, 784)).astype("float32"),
        y=rng.integers(0, 10, 64),
        student=lambda: speed.mlp(32, "student"),
        feature=("logits", "logits"),
    )
    keras.utils.set_random_seed(0)
    teacher = speed.frozen(speed.mlp(64, "teacher"))
    losses = {}
    for variant in ("minimal_kd", "ours_kd"):
        keras.utils.set_random_seed(1)
        model, x = speed.build(variant, case, teacher, {})
        model.compile(loss=speed.SCCE)
        logs = model.evaluate(x, case["y"], batch_size=64, verbose=0,
                              return_dict=True)
        losses[variant] = logs["loss"]
    assert losses["minimal_kd"] == pytest.approx(losses["ours_kd"], rel=1e-5)


@pytest.mark.slow
def test_memory_probe_reports_the_peak_of_one_variant():
    memory = run("--case", "mnist_mlp", "--steps", "2",
                 "--memory-probe", "ours_fitnet_kd")
    # Training allocates (optimizer state, activations, compiled code): a
    # sampler that saw nothing would report no growth, as the process's
    # lifetime peak (set by loading the data) once did.
    assert memory["peak_rss_mb"] > memory["training_growth_mb"] > 1.0


@pytest.mark.slow
def test_dtype_policy_option_reaches_the_models():
    """The GPU run's `--dtype-policy` sets the policy the models are built under."""
    report = run("--case", "mnist_mlp", "--steps", "1", "--repeats", "1",
                 "--no-memory", "--variants", "ours_kd",
                 "--dtype-policy", "mixed_bfloat16")
    assert report["dtype_policy"] == "mixed_bfloat16"
    assert set(report["cases"]["mnist_mlp"]["step_ms"]) == {"plain", "ours_kd"}


OP_COUNT = os.path.join(os.path.dirname(SCRIPT), "op_count.py")


@pytest.mark.slow
def test_a_kd_step_dispatches_at_most_1_2_times_the_minimal_steps_operations():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, OP_COUNT], capture_output=True, text=True, env=env
    )
    if keras.backend.backend() != "torch":  # the counter is PyTorch's
        assert result.returncode != 0 and "KERAS_BACKEND=torch" in result.stderr
        return
    report = json.loads(result.stdout)
    counts = report["ops_per_step"]
    assert counts["plain"] < counts["plain_with_teacher"] < counts["minimal_kd"]
    assert report["ours_kd_over_minimal_kd"] == pytest.approx(
        counts["ours_kd"] / counts["minimal_kd"], abs=1e-3
    )
    assert sum(report["ours_kd_by_op"].values()) == counts["ours_kd"]
    assert report["target"]["met"], counts


QUALITY = os.path.join(os.path.dirname(SCRIPT), "quality.py")


@pytest.mark.slow
def test_quality_benchmark_writes_every_task_and_method(tmp_path):
    """The quick smoke run: tiny slices, 1 epoch, 2 seeds (numbers unchecked)."""
    output = tmp_path / "quality.json"
    subprocess.run([sys.executable, QUALITY, "--quick", "--output", str(output)],
                   capture_output=True, text=True, check=True)
    report = json.loads(output.read_text())
    assert report["backend"] == keras.backend.backend() and report["quick"]
    assert set(report["tasks"]) == {
        "fashion_mnist_cnn", "uci_cross_modal", "fine_foods_text", "digits_transfer"
    }
    for task in report["tasks"].values():
        assert set(task["methods"]) == set(report["methods"])
        assert task["best"] in task["methods"] and task["best"] != "labels_only"
        for name, cell in task["methods"].items():
            assert len(cell["values"]) == 2
            assert all(0.0 <= v <= 1.0 for v in cell["values"])
            if name != "labels_only":
                base = task["methods"]["labels_only"]["values"]
                assert np.isclose(cell["gain_mean"], np.mean(cell["values"]) - np.mean(base))


def test_quality_page_marks_only_gains_beyond_two_standard_errors():
    sys.path.insert(0, os.path.dirname(QUALITY))
    import quality

    def cell(values, base):
        summary = quality.summarise(
            [{"teacher": 0.9, "labels_only": b, **{m: v for m in quality.METHODS
                                                   if m != "labels_only"}}
             for v, b in zip(values, base)]
        )
        return summary["methods"]["kd"]

    clear = cell([0.80, 0.82, 0.81], [0.70, 0.71, 0.70])
    noisy = cell([0.80, 0.60, 0.75], [0.70, 0.71, 0.70])
    assert clear["significant"] and not noisy["significant"]
    gains = np.array([0.10, 0.11, 0.11])
    assert np.isclose(clear["gain_standard_error"], gains.std(ddof=1) / np.sqrt(3))
    report = {"backend": "jax", "versions": {"keras": "3"}, "seeds": [0, 1, 2],
              "methods": {"labels_only": "labels", "kd": "KD"},
              "tasks": {"digits_transfer": {"description": "d", "best": "kd",
                                 "teacher": {"mean": 0.9, "std": 0.01},
                                 "methods": {"labels_only": {"mean": 0.7, "std": 0.0},
                                             "kd": clear}}}}
    text = quality.page(report)
    assert f"**{clear['gain_mean']:+.4f} ± {clear['gain_standard_error']:.4f}**" in text
    assert "| `digits_transfer` | d | `kd` |" in text and "1 of 1 |" in text
    assert "Here `kd` beats labels only by more than two standard errors." in text
    report["tasks"]["digits_transfer"]["methods"]["kd"] = noisy
    assert ("Here no method beats labels only by more than two standard errors; "
            "1 of 1 is within two standard errors of it.") in quality.page(report)
    losing = cell([0.60, 0.61, 0.60], [0.70, 0.71, 0.70])
    report["tasks"]["digits_transfer"]["methods"]["kd"] = losing
    assert ("Here no method beats labels only by more than two standard errors, "
            "and `kd` loses to it by more than two.") in quality.page(report)


KD_SETTINGS = os.path.join(os.path.dirname(SCRIPT), "kd_settings.py")


@pytest.mark.slow
def test_kd_settings_study_writes_its_grid(tmp_path):
    """The quick smoke run: one task, a 2 x 2 grid, 2 seeds (numbers unchecked)."""
    output = tmp_path / "kd_settings.json"
    subprocess.run([sys.executable, KD_SETTINGS, "--quick", "--tasks", "digits_transfer",
                    "--output", str(output)], capture_output=True, text=True, check=True)
    report = json.loads(output.read_text())
    (task,) = report["tasks"].values()
    assert list(task["grid"]) == ["1.0", "4.0"]
    base = task["labels_only"]["values"]
    for row in task["grid"].values():
        assert list(row) == ["0.1", "0.5"]
        for cell in row.values():
            assert len(cell["values"]) == 2
            assert np.isclose(cell["gain_mean"], np.mean(cell["values"]) - np.mean(base))
    best = task["best"]
    assert task["grid"][str(best["temperature"])][str(best["student_loss_weight"])]["mean"] == max(
        cell["mean"] for row in task["grid"].values() for cell in row.values()
    )


def test_kd_settings_tables_hold_every_cell():
    sys.path.insert(0, os.path.dirname(KD_SETTINGS))
    import kd_settings
    import quality

    base = [0.70, 0.72, 0.71]
    grid = {"1.0": {"0.1": quality.paired([0.75, 0.76, 0.77], base),
                    "0.5": quality.paired([0.71, 0.72, 0.70], base)}}
    report = {"tasks": {"task": {"description": "d", "labels_only": quality.spread(base),
                                 "grid": grid}}}
    text = kd_settings.markdown_tables(report)
    assert "Labels only: 0.7100 ± 0.0100" in text
    assert "| temperature | labels weight 0.1 | labels weight 0.5 |" in text
    gain = grid["1.0"]["0.1"]
    assert f"| 1 | {gain['gain_mean']:+.4f} ± {gain['gain_standard_error']:.4f} |" in text
