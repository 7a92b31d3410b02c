"""One distillation step on one device and distributed, in a fresh process.

`tests/test_distribution.py` runs this script as

    KERAS_BACKEND=<backend> python tests/distributed_step.py MODE OUT.npz

because the devices of a distributed run must be configured before the
backend initialises, which the test process has done already. MODE is the
backend's own path:

- jax, `"data_parallel"`: `keras.distribution.DataParallel` over 4 virtual
  CPU devices (`--xla_force_host_platform_device_count`).
- jax, `"model_parallel"`: `keras.distribution.ModelParallel` on a 2 x 2
  mesh (`"batch"`, `"model"`): the data split in two, the teacher's kernels
  split over `"model"`, the student replicated.
- tensorflow, `"mirrored"`: `tf.distribute.MirroredStrategy` over 2 logical
  CPU devices.
- torch, `"ddp"`: `DistributedDataParallel` over 2 CPU processes (gloo),
  with the training loop of `docs/scaling-out.md`.

Each run takes one SGD step on the same global batch of 8 (with sample
weights and a regularized student), from the same weights, of a
`Distiller` (KD and a FitNet hint on the hidden layers) and, where `fit` runs the step, of a `MutualLearning` (`KINDS`).
OUT receives, per kind, the trained models' weights before the step
(`<kind>_initial_weight_<i>`) and after it on one device (`single`) and
distributed (`parallel`), the logs of both steps (`<kind>_<run>_logs` and
`<kind>_<run>_log_names`), and `devices`, the number of devices (or
processes) of the distributed step; on JAX, also where the kernels live.
"""

import os
import sys

MODE, OUT = sys.argv[1], sys.argv[2]
BACKEND = os.environ["KERAS_BACKEND"]
DEVICES = {"data_parallel": 4, "model_parallel": 4, "mirrored": 2, "ddp": 2}[MODE]
# A Distiller on every path; MutualLearning where `fit` runs the step.
KINDS = ("distiller",) if MODE in ("model_parallel", "ddp") else (
    "distiller", "mutual_learning"
)
GLOBAL_BATCH = 8

if BACKEND == "jax":  # before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={DEVICES}"
    )
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

if BACKEND == "tensorflow":  # before TensorFlow initialises its devices
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * DEVICES,
    )

import keras  # noqa: E402

import keras_distill  # noqa: E402


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(GLOBAL_BATCH, 8)).astype("float32")
    y = rng.integers(0, 3, GLOBAL_BATCH)
    sample_weight = rng.uniform(0.5, 1.5, GLOBAL_BATCH).astype("float32")
    return x, y, sample_weight


def classifier(width, name, regularizer=None):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(
                width, "relu", kernel_regularizer=regularizer, name="hidden"
            ),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )
    rng = np.random.default_rng(width)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32")
         for w in model.get_weights()]
    )
    return model


def build(kind):
    """A compiled Distiller or MutualLearning, from the same weights each time."""
    regularizer = keras.regularizers.L2(0.01)
    if kind == "distiller":
        # The hint reads both models' hidden layers: each replica's step
        # must read its own pass's features.
        connector = keras.layers.Dense(
            16, kernel_initializer=keras.initializers.RandomNormal(seed=3)
        )
        model = keras_distill.Distiller(
            classifier(16, "teacher"),
            classifier(8, "student", regularizer),
            [keras_distill.losses.KD(temperature=2.0),
             keras_distill.losses.FitNet("hidden", "hidden", connector=connector)],
            student_loss_weight=0.3,
            distillation_loss_weights=[0.7, 0.5],
        )
    else:
        model = keras_distill.MutualLearning(
            [classifier(8, "peer_1", regularizer), classifier(6, "peer_2")],
            keras_distill.losses.KD(temperature=2.0),
            distillation_loss_weight=0.7,
        )
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def trained(model):
    """The models `model` trains: the student, or the peers."""
    return [model.student] if hasattr(model, "student") else model.peers


def weights(model):
    return [w for m in trained(model) for w in m.get_weights()]


def fit_step(model):
    """One `fit` step on the global batch; returns the logs."""
    x, y, sample_weight = data()
    history = model.fit(
        x, y, sample_weight=sample_weight, batch_size=GLOBAL_BATCH,
        epochs=1, shuffle=False, verbose=0,
    )
    return {key: values[0] for key, values in history.history.items()}


def single_device(kind):
    model = build(kind)
    initial = weights(model)
    logs = fit_step(model)
    return initial, weights(model), logs


def jax_parallel(kind):
    devices = keras.distribution.list_devices()
    assert len(devices) == DEVICES, devices
    if MODE == "data_parallel":
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        mesh = keras.distribution.DeviceMesh(
            (2, 2), axis_names=("batch", "model"), devices=devices
        )
        layout_map = keras.distribution.LayoutMap(mesh)
        # Keys are regular expressions on the variables' paths; only the
        # teacher's match, so the student is replicated.
        layout_map["teacher/hidden/kernel"] = (None, "model")
        layout_map["teacher/hidden/bias"] = ("model",)
        layout_map["teacher/logits/kernel"] = ("model", None)
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
    extra = {}
    with distribution.scope():
        model = build(kind)
        logs = fit_step(model)
        extra["student_kernel_devices"] = np.array(len(
            trained(model)[0].get_layer("hidden").kernel.value.sharding.device_set
        ))
        if MODE == "model_parallel":
            for role, m in (("teacher", model.teacher), ("student", model.student)):
                kernel = m.get_layer("hidden").kernel.value
                extra[f"{role}_kernel_shard_shapes"] = np.array(
                    [shard.data.shape for shard in kernel.addressable_shards]
                )
    return weights(model), logs, extra


def tensorflow_parallel(kind, strategies=[]):
    if not strategies:  # one per process: two would share collective keys
        strategies.append(
            tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(DEVICES)])
        )
    strategy = strategies[0]
    assert strategy.num_replicas_in_sync == DEVICES
    with strategy.scope():
        model = build(kind)
    logs = fit_step(model)
    return weights(model), logs, {}


def ddp_worker(rank, kind, init_file, out):
    """One rank of a two-process DistributedDataParallel step."""
    import datetime

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank,
        world_size=DEVICES, timeout=datetime.timedelta(seconds=120),
    )
    model = build(kind)
    model.teacher.trainable = False  # frozen: DDP syncs the student only
    ddp = DistributedDataParallel(model)
    x, y, sample_weight = data()
    size = GLOBAL_BATCH // DEVICES
    x, y, sample_weight = (
        torch.as_tensor(a[rank * size:(rank + 1) * size])
        for a in (x, y, sample_weight)
    )

    model.zero_grad()
    y_pred = ddp(x, training=True)  # the student's pass, through DDP
    loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
    loss.backward()  # DDP averages the gradients over the processes
    variables = model.trainable_variables
    with torch.no_grad():
        model.optimizer.apply([v.value.grad for v in variables], variables)

    # The metrics hold sums (total, count): summed over the processes, they
    # give the logs of the global batch.
    for variable in [v for metric in model.metrics for v in metric.variables]:
        value = variable.value.detach().clone()
        dist.all_reduce(value)
        variable.assign(value)
    logs = model.get_metrics_result()
    loss = loss.detach()
    dist.all_reduce(loss)
    logs["loss"] = loss / DEVICES  # Keras's own loss tracker is unused here
    if rank == 0:
        np.savez(out, names=np.array(sorted(logs)),
                 values=np.array([float(logs[k]) for k in sorted(logs)]),
                 **{f"weight_{i}": w for i, w in enumerate(weights(model))})
    # DDP before its process group: the other order can hang at exit.
    del ddp
    dist.destroy_process_group()


def torch_parallel(kind):
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.npz")
        mp.spawn(ddp_worker, args=(kind, os.path.join(tmp, "init"), out),
                 nprocs=DEVICES, join=True)
        result = np.load(out)
        count = len(result.files) - 2
        logs = dict(zip(result["names"].tolist(), result["values"].tolist()))
        return [result[f"weight_{i}"] for i in range(count)], logs, {}


if __name__ == "__main__":
    parallel = {"jax": jax_parallel, "tensorflow": tensorflow_parallel,
                "torch": torch_parallel}[BACKEND]
    arrays = {"devices": np.array(DEVICES)}
    for kind in KINDS:
        initial, single_weights, single_logs = single_device(kind)
        parallel_weights, parallel_logs, extra = parallel(kind)
        arrays.update({f"{kind}_{k}": v for k, v in extra.items()})
        for run, logs in (("single", single_logs), ("parallel", parallel_logs)):
            arrays[f"{kind}_{run}_log_names"] = np.array(sorted(logs))
            arrays[f"{kind}_{run}_logs"] = np.array([logs[k] for k in sorted(logs)])
        for run, values in (("initial", initial), ("single", single_weights),
                            ("parallel", parallel_weights)):
            arrays.update(
                {f"{kind}_{run}_weight_{i}": w for i, w in enumerate(values)}
            )
    np.savez(OUT, **arrays)
    print("wrote", OUT)
