"""A run that stops (a save and a reload, or a process killed mid-epoch)
continues as if it had never stopped: the same weights, bit for bit."""

import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_distill
from keras_distill.losses import KD
from keras_distill._keras_internals import seed_generators
from tests.conftest import classification_data
from tests.reference import to_np

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def dropout_mlp(width, rate, seed):
    """PyTorch's Keras draws an unseeded Dropout's masks from torch's global
    generator, which no file holds; a seeded one draws from its own."""
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dropout(rate, seed=seed),
        keras.layers.Dense(3),
    ])


def distiller_with_dropout():
    keras.utils.set_random_seed(0)
    distiller = keras_distill.Distiller(
        dropout_mlp(16, 0.0, 1), dropout_mlp(8, 0.5, 2), KD(temperature=2.0)
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE)
    return distiller


def max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_a_reloaded_distiller_with_dropout_continues_exactly(tmp_path):
    x, y = classification_data(64)
    fit = dict(batch_size=16, shuffle=False, verbose=0)
    distiller = distiller_with_dropout()
    distiller.fit(x, y, epochs=2, **fit)
    path = os.fspath(tmp_path / "distiller.keras")
    distiller.save(path)
    distiller.fit(x, y, epochs=4, initial_epoch=2, **fit)
    loaded = keras.saving.load_model(path)
    loaded.fit(x, y, epochs=4, initial_epoch=2, **fit)
    assert max_difference(loaded.student.get_weights(), distiller.student.get_weights()) == 0.0


def test_a_file_saved_without_generator_states_still_loads(tmp_path):
    distiller = distiller_with_dropout()
    store = {}
    distiller.save_own_variables(store)
    assert sorted(store) == ["0", "1", "seed_generator_state_0"]  # the student's Dropout
    # As an earlier version saved: the loss weights alone. They load; the
    # generator's state is left as it is.
    (generator,) = seed_generators(distiller)
    generator.state.assign(generator.state + 1)  # differs from the store's
    state = to_np(generator.state).copy()
    distiller.load_own_variables({"0": np.float32(0.25), "1": np.float32(0.75)})
    assert distiller.student_loss_weight == 0.25
    assert distiller.distillation_loss_weights == [0.75]
    np.testing.assert_array_equal(to_np(generator.state), state)
    distiller.load_own_variables(store)  # a new file restores it
    np.testing.assert_array_equal(to_np(generator.state), store["seed_generator_state_0"])


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import keras, numpy as np
    import keras_distill
    from tests.test_resume import distiller_with_dropout
    from tests.conftest import classification_data

    backup, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class KillAfter(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            KillAfter.batches += 1
            if KillAfter.batches == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    x, y = classification_data(64)
    distiller = distiller_with_dropout()
    distiller.fit(
        x, y, epochs=4, batch_size=16, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup), KillAfter()],
    )
    np.savez(out, *distiller.student.get_weights())
""")


@pytest.mark.slow
def test_a_process_killed_mid_epoch_resumes_with_backup_and_restore(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mine = tmp_path / "notes.txt"  # a file of the user's, beside the backups
    mine.write_text("mine")

    def run(name, kill_after):
        return subprocess.run(
            [sys.executable, "-c", SCRIPT, os.fspath(tmp_path / f"{name}_backup"),
             os.fspath(tmp_path / f"{name}.npz"), str(kill_after)],
            cwd=root, capture_output=True, text=True,
            env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        )

    assert run("straight", -1).returncode == 0
    # 4 batches an epoch: killed in the third epoch, after its second batch.
    killed = run("resumed", 10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "resumed_backup").exists()
    resumed = run("resumed", -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = np.load(tmp_path / "straight.npz")
    again = np.load(tmp_path / "resumed.npz")
    difference = max_difference(
        [straight[k] for k in straight.files], [again[k] for k in again.files]
    )
    print(f"max weight difference after the resume: {difference}")
    assert difference == 0.0
    assert mine.read_text() == "mine"
    assert not (tmp_path / "resumed_backup").exists()  # removed at the end
