"""`_keras_internals`: the only module that touches Keras's private API.

The first test fails when library code elsewhere reaches into `keras.src`,
writes an instance's `__dict__`, bypasses attribute tracking, or reads or
overrides a private attribute it did not define itself (a Keras one). The
others are contract tests, one per private helper: each fails, by name,
when a Keras release changes what the helper relies on.
"""

import ast
import pathlib

import keras
import numpy as np
import pytest
from keras import ops

import keras_distill
from keras_distill import _keras_internals as internals
from tests.conftest import classification_data
from tests.conftest import mlp
from tests.reference import to_np

PACKAGE = pathlib.Path(keras_distill.__file__).parent
INTERNALS = PACKAGE / "_keras_internals.py"
# NamedTuple's public API happens to start with an underscore.
NAMEDTUPLE = {"_replace", "_fields", "_asdict", "_make"}


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p != INTERNALS)


def _own_private_names():
    """Private names the package defines: functions, classes, methods, and
    attributes it assigns (directly or through `set_untracked`)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "set_untracked"
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return {n for n in names if n.startswith("_")}


def _private_uses(path, own):
    """(line, what) for each touch of Keras's private API in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("keras.src")]
        elif isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not name.startswith("__")
            if name == "__dict__" or (
                private and name not in own and name not in NAMEDTUPLE
            ):
                found.append((node.lineno, f".{name}"))
            elif name == "__setattr__" and getattr(node.value, "id", None) == "object":
                found.append((node.lineno, "object.__setattr__"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "vars":
            found.append((node.lineno, "vars()"))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                overrides = isinstance(item, ast.FunctionDef) and item.name.startswith("_")
                if overrides and not item.name.startswith("__") and (
                    hasattr(keras.Model, item.name) or hasattr(keras.layers.Layer, item.name)
                ):
                    found.append((item.lineno, f"overrides {item.name}"))
    return found


def _keras_private_names():
    """What Keras's own models, layers and metrics define (instances too)."""
    model = mlp(2)
    model.compile(loss="mse", metrics=["mae"])
    objects = [model, keras.layers.Dense(2), keras.metrics.Mean(), keras.layers.Layer]
    return {n for o in objects for n in dir(o) if n.startswith("_")}


def test_library_code_reaches_keras_internals_only_through_one_module():
    # Names Keras defines are not ours, even where we also assign them.
    own = _own_private_names() - _keras_private_names()
    offences = {
        str(path.relative_to(PACKAGE)): uses
        for path in _modules()
        if (uses := _private_uses(path, own))
    }
    assert not offences, offences


def test_the_scan_catches_each_kind_of_private_access(tmp_path):
    # The check above must be able to fail: each line here is an offence.
    module = tmp_path / "bad.py"
    module.write_text(
        "from keras.src.losses import loss\n"
        "import keras.src.ops\n"
        "x = model._compile_loss\n"
        "vars(layer)['call'] = None\n"
        "object.__setattr__(layer, 'x', 1)\n"
        "y = layer.__dict__\n"
        "class A:\n"
        "    def _flatten_layers(self):\n"
        "        pass\n"
    )
    lines = sorted({line for line, _ in _private_uses(module, set())})
    assert lines == [1, 2, 3, 4, 5, 6, 8]


def test_keras_masks_are_read_and_set():
    x = np.array([[1, 2, 0, 0]])
    embedded = keras.layers.Embedding(5, 3, mask_zero=True)(x)
    np.testing.assert_array_equal(
        to_np(internals.get_keras_mask(embedded)), [[True, True, False, False]]
    )
    tensor = ops.ones((1, 4, 3))
    assert internals.get_keras_mask(tensor) is None
    internals.set_keras_mask(tensor, ops.convert_to_tensor([[True, False, True, True]]))
    np.testing.assert_array_equal(
        to_np(internals.get_keras_mask(tensor)), [[True, False, True, True]]
    )


class Composite(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_child_layers_of_a_composite_layer_are_its_direct_sublayers():
    layer = Composite()
    layer(np.zeros((1, 3), "float32"))
    assert [c.name for c in internals.child_layers(layer)] == ["first", "second"]


def test_set_untracked_keeps_types_and_adds_no_sublayer():
    layer = keras.layers.Dense(2)
    internals.set_untracked(layer, "kept", [keras.layers.Dense(3)])
    assert type(layer.kept) is list
    assert not internals.child_layers(layer)


@pytest.mark.parametrize("mode", ["plain", "int8", "remat"])
def test_a_layer_call_runs_through_the_hooked_methods(mode):
    # Operation.__call__ runs `call`, or `quantized_call` once quantized,
    # through `rematerialized_call` under a RematScope.
    if mode == "remat":
        with keras.RematScope(mode="full"):
            layer = keras.layers.Dense(4)
    else:
        layer = keras.layers.Dense(4)
    layer.build((None, 3))
    if mode == "int8":
        layer.quantize("int8")
    seen = []

    def spy(name):
        def make_hook(original):
            def hook(*args, **kwargs):
                seen.append(name)
                return original(*args, **kwargs)

            return hook

        return make_hook

    for name in (*internals.LAYER_CALL_METHODS, internals.REMAT_METHOD):
        assert internals.install_method_hook(layer, name, spy(name))
        assert not internals.install_method_hook(layer, name, spy(name))  # once
        assert internals.has_method_hook(layer, name)
    assert internals.is_rematerialized(layer) == (mode == "remat")
    layer(np.ones((2, 3), "float32"))
    expected = {"plain": ["call"], "int8": ["quantized_call"],
                "remat": ["rematerialized_call", "call"]}[mode]
    assert seen == expected


def test_multi_head_attention_exposes_its_attention_hook():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    x = np.random.default_rng(0).normal(size=(1, 3, 8)).astype("float32")
    layer(x, x)
    recorded = []
    compute = getattr(layer, internals.ATTENTION_METHOD)
    wrapped = internals.attention_scores_call(
        compute, lambda: True, lambda scores, mask: recorded.append(scores)
    )
    internals.install_method_hook(layer, internals.ATTENTION_METHOD, lambda _: wrapped)
    output = layer(x, x)
    assert tuple(recorded[0].shape) == (1, 2, 3, 3)
    np.testing.assert_allclose(to_np(ops.sum(recorded[0], -1)), np.ones((1, 2, 3)), rtol=1e-5)
    assert tuple(output.shape) == (1, 3, 8)


def test_flash_attention_is_refused_for_attention_taps():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, flash_attention=True)
    with pytest.raises(ValueError, match="flash attention"):
        internals.check_attention_scores_available(layer, "mha", "teacher")


def test_compiled_loss_is_the_loss_given_to_compile():
    model = mlp(4)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = classification_data(8)
    logits = model(x)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    np.testing.assert_allclose(
        to_np(internals.compiled_loss(model)(y, logits, None)), to_np(expected), rtol=1e-6
    )


def test_keras_logs_the_total_through_its_loss_tracker():
    # What `log_total_with_terms` relies on: Keras's steps log `loss` from
    # `_loss_tracker`, the model's first metric; with it idle, `loss` is gone.
    x, y = classification_data(16)
    models = [mlp(4), mlp(4)]
    for model in models:
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        assert model.metrics[0] is model._loss_tracker
    internals.log_total_with_terms(models[1])
    assert "loss" in models[0].train_on_batch(x, y, return_dict=True)
    assert "loss" not in models[1].train_on_batch(x, y, return_dict=True)
    assert models[1].metrics_names.count("loss") == 1  # the idle tracker only


def test_logs_keep_their_order_in_list_results():
    x, y = classification_data(16)
    distiller = keras_distill.Distiller(
        mlp(8, name="t"), mlp(4, name="s"),
        [keras_distill.losses.KD(temperature=2.0), keras_distill.losses.DKD()],
    )
    distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    logs = distiller.test_on_batch(x, y, return_dict=True)
    values = distiller.test_on_batch(x, y)
    order = ["loss", "accuracy", "student_loss", "kd", "dkd", "distillation_loss",
             "teacher_agreement", "total_loss"]
    np.testing.assert_allclose(values, [logs[k] for k in order], rtol=1e-6)
    # Keras's own order sorts a dict-returning metric's keys: the override
    # is what keeps them.
    np.testing.assert_allclose(internals.flatten_logs(distiller, logs), values)


def test_a_distillers_own_call_is_never_rematerialized():
    with keras.RematScope(mode="full"):
        distiller = keras_distill.Distiller(
            mlp(8, name="t"), mlp(4, name="s"), keras_distill.losses.KD()
        )
    assert internals.is_rematerialized(distiller)
    def call(x):
        return x

    assert distiller.rematerialized_call(call) is call


def test_distribution_scaling_is_the_identity_on_one_device():
    value = ops.convert_to_tensor(2.5)
    assert float(internals.scale_loss_for_distribution(value)) == 2.5
    assert float(internals.unscale_loss_for_distribution(value)) == 2.5


def _variables_and_grads(seed):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=(3, 2)).astype("float32")),
                 keras.Variable(rng.normal(size=(2,)).astype("float32"))]
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables]
             for _ in range(3)]
    return variables, grads


def _apply(optimizer, grads, variables):
    """One step as Keras's trainers take it: JAX's is stateless."""
    grads = [ops.convert_to_tensor(g) for g in grads]
    if keras.backend.backend() != "jax":
        optimizer.apply(grads, variables)
        return
    if not optimizer.built:
        optimizer.build(variables)
    new_values, new_state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads, [v.value for v in variables]
    )
    for variable, value in zip(variables + optimizer.variables, list(new_values) + list(new_state)):
        variable.assign(value)


def test_skipping_optimizer_is_the_inner_one_on_finite_steps_and_idle_otherwise():
    plain_vars, grads = _variables_and_grads(0)
    skip_vars, _ = _variables_and_grads(0)
    plain = keras.optimizers.Adam(0.1)
    skipping = internals.skipping_non_finite_steps(keras.optimizers.Adam(0.1))
    assert internals.skipping_non_finite_steps(skipping) is skipping
    for step in grads:
        _apply(plain, step, plain_vars)
        _apply(skipping, step, skip_vars)
    for a, b in zip(plain_vars, skip_vars):
        np.testing.assert_array_equal(to_np(a), to_np(b))  # bit for bit
    assert int(to_np(skipping.skipped_steps)) == 0
    kept = [v for v in skipping.variables if v is not skipping.skipped_steps]
    state = [to_np(v).copy() for v in kept]
    weights = [to_np(v).copy() for v in skip_vars]
    for count, poison in enumerate((np.nan, np.inf), 1):
        bad = [g.copy() for g in grads[0]]
        bad[1][0] = poison
        _apply(skipping, bad, skip_vars)
        for before, v in zip(weights + state, skip_vars + kept):
            np.testing.assert_array_equal(before, to_np(v))
        assert int(to_np(skipping.skipped_steps)) == count
    assert int(to_np(skipping.iterations)) == 3
