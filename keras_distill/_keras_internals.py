"""The one place where keras-distill reaches into Keras's private API.

Rules: everything else in the package uses the public `keras` and `keras.ops`
API only, and touches no private attribute of an object it does not own
(`tests/test_internals.py` enforces both). Each helper here has a contract
test in that file, so that a Keras release that changes what it relies on
fails there, by name. When Keras exposes a public equivalent of something
here, switch to it and delete the private use.
"""

import functools

import keras
from keras import ops

try:  # Keras 3.x keeps padding masks as a tensor attribute (a side table on JAX).
    from keras.src.backend.common.masking import get_keras_mask as _get_mask
    from keras.src.backend.common.masking import set_keras_mask as _set_mask
except ImportError:  # pragma: no cover - depends on the installed Keras
    _get_mask = _set_mask = None


def get_keras_mask(x):
    """Returns the padding mask Keras attached to tensor `x`, or `None`.

    Args:
        x: a tensor produced by a Keras layer or model.

    Returns:
        A boolean tensor of shape `x.shape[:-1]` when a layer such as
        `Embedding(mask_zero=True)` or `Masking` set a mask, else `None`.
    """
    if _get_mask is None:  # pragma: no cover
        return getattr(x, "_keras_mask", None)
    return _get_mask(x)


def set_keras_mask(x, mask):
    """Attaches the padding `mask` to tensor `x`, as a Keras layer would."""
    if _set_mask is None:  # pragma: no cover
        x._keras_mask = mask
    else:
        _set_mask(x, mask)


def child_layers(layer):
    """The layers directly inside `layer` (a model or a composite layer).

    Keras tracks sublayers of every layer, but only models expose them
    publicly (`Model.layers`); composite layers such as a keras-hub
    `TransformerEncoder` do not.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def seed_generators(layer):
    """Every `keras.random.SeedGenerator` of `layer` and the layers inside it,
    in a fixed order (Dropout's, a random augmentation's, ...).

    Keras keeps them in `Layer._seed_generators`, and saves none of their
    states: a model loaded from a file draws the masks it drew when built.
    """
    found = {}
    stack = [layer]
    while stack:
        current = stack.pop(0)
        for generator in current._seed_generators:
            found.setdefault(id(generator), generator)
        stack.extend(child_layers(current))
    return list(found.values())


def set_untracked(obj, name, value):
    """Sets `obj.name = value` past Keras's attribute tracking.

    A layer's `__setattr__` turns lists and dicts into tracked containers
    and collects layers and variables; per-thread state, structures that
    must keep their type and references that must not become sublayers are
    set this way.
    """
    object.__setattr__(obj, name, value)


# -- How a layer call runs -----------------------------------------------
#
# `Operation.__call__` runs a layer's `call`, or its `quantized_call` once
# `layer.quantize(...)` has set a quantization mode; under a `RematScope`
# it first passes that method through `rematerialized_call`, which returns
# it wrapped in the backend's rematerialisation (`jax.checkpoint`,
# `tf.recompute_grad`, `torch.utils.checkpoint`) or unchanged. Taps wrap
# these instance methods once, per layer, to see what the layer returns.

LAYER_CALL_METHODS = ("call", "quantized_call")
REMAT_METHOD = "rematerialized_call"

# `MultiHeadAttention._compute_attention` is the documented hook for custom
# attention ("Users can override this function"); taps wrap it per instance
# to read the attention probabilities.
ATTENTION_METHOD = "_compute_attention"

_HOOK = "_keras_distill_hook"


def install_method_hook(layer, name, make_hook):
    """Wraps `layer.<name>` once, for this instance only.

    Args:
        layer: a Keras layer.
        name: the name of one of its methods.
        make_hook: `make_hook(original) -> callable`, given the bound
            method as it is; its result replaces the method on `layer`.

    Returns:
        `True` if the hook was installed, `False` if `layer` had one
        already (hooks are installed once and stay, doing nothing while
        no tap records).
    """
    if has_method_hook(layer, name):
        return False
    original = getattr(layer, name)
    hook = functools.wraps(original)(make_hook(original))
    setattr(hook, _HOOK, True)
    vars(layer)[name] = hook
    return True


def is_rematerialized(layer):
    """Whether `layer` was built under a `keras.RematScope` (with a mode)."""
    return bool(getattr(layer, "_remat_mode", None))


def has_method_hook(layer, name):
    """Whether `install_method_hook` wrapped `layer.<name>`."""
    return getattr(vars(layer).get(name), _HOOK, False)


def check_attention_scores_available(layer, path, role):
    """Raises if the attention layer at `path` cannot return its scores."""
    if getattr(layer, "_flash_attention", False):
        raise ValueError(
            f"The {role}'s attention layer {path!r} uses flash attention, "
            "which never forms the attention scores. Build it with "
            "`flash_attention=False` (or call "
            "`keras.config.disable_flash_attention()` before building it) to "
            "distil its attention."
        )


def attention_scores_call(compute_attention, wanted, record):
    """Wraps a `_compute_attention` so that it also records its scores.

    Args:
        compute_attention: the layer's bound `_compute_attention`.
        wanted: `wanted()` says whether a tap records this call.
        record: called with the attention probabilities `(B, N, T, S)` and
            the boolean mask the layer applied (broadcastable to
            `(B, T, S)`), or `None` when it applied none.

    Returns:
        A function with `_compute_attention`'s signature, whose output is the
        layer's own. When the layer ran a fused kernel, which never forms
        the probabilities, they are formed by Keras's explicit path in a
        second call (fused and explicit paths can differ on queries that
        attend to nothing, so the output is not taken from that call).
    """

    def recording(
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        **kwargs,
    ):
        args = (query, key, value, attention_mask, training)
        output, scores = compute_attention(*args, return_attention_scores, **kwargs)
        if not wanted():
            return output, scores
        probabilities = scores
        if probabilities is None:
            _, probabilities = compute_attention(*args, True, **kwargs)
        mask = attention_mask
        if kwargs.get("use_causal_mask") and mask is None:
            length_q, length_k = ops.shape(query)[1], ops.shape(key)[1]
            mask = ops.cast(ops.tril(ops.ones((length_q, length_k))), "bool")
        record(probabilities, mask)
        return output, scores

    return recording


# -- Training-loop details ------------------------------------------------


def in_traced_step():
    """Whether code runs inside a traced step (JAX's stateless scope, a
    TensorFlow graph), where a variable's value is not a number yet."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.utils.backend_utils import in_tf_graph

    return in_stateless_scope() or in_tf_graph()


def compiled_loss(model):
    """The loss `model.compile(loss=...)` set, as Keras calls it, or `None`.

    `Model.compute_loss` applies it to `(y, y_pred, sample_weight)`, with
    Keras's handling of multi-output losses, `loss_weights` and masks.
    """
    return model._compile_loss


def retrace_steps(model):
    """Makes `model`'s next `fit`, `evaluate` or `predict` trace its steps
    again (Keras keeps each compiled step until `compile` runs again)."""
    model.train_function = None
    model.test_function = None
    model.predict_function = None


def flatten_logs(model, logs):
    """`logs` as the list (or single value) Keras's `evaluate` and
    `train_on_batch` return without `return_dict`."""
    return model._flatten_metrics_in_order(logs)


class KeepsLogOrder:
    """Makes a model's list results keep the order of its logs.

    Keras's order for the lists of `evaluate`, `train_on_batch` and
    `test_on_batch` (`Model._flatten_metrics_in_order`) puts the keys of a
    metric that returns a dict last and sorted. A model that logs through
    such a metric (`StepMeans`) lists them in `step_means.names` order, where
    Keras put the first of them.
    """

    def _flatten_metrics_in_order(self, logs):
        keys = super()._flatten_metrics_in_order({key: key for key in logs})
        keys = [keys] if isinstance(keys, str) else keys
        ours = [k for k in self.step_means.names if k in logs and k != "loss"]
        if ours:
            at = min(keys.index(key) for key in ours)
            rest = [key for key in keys if key not in ours]
            keys = rest[:at] + ours + rest[at:]
        results = [logs[key] for key in keys]
        return results[0] if len(results) == 1 else results


class _LoggedWithTheTerms(keras.metrics.Metric):
    """Keras's tracker of the total loss, made idle: the model logs it itself.

    Keras's `train_step` and `test_step` average the total in a
    `keras.metrics.Mean` of their own (`Trainer._loss_tracker`). A model
    that logs the total with its other terms, in one `StepMeans` update,
    saves that metric's update, read and reset: 18 operations of each step
    on PyTorch. The `loss` key comes from the model's own metric.
    """

    def __init__(self):
        super().__init__(name="loss")

    def update_state(self, *args, **kwargs):
        pass

    def result(self):
        return {}

    def reset_state(self):
        pass


def log_total_with_terms(model):
    """After `compile`: `model` logs its total itself (see `_LoggedWithTheTerms`)."""
    # As `compile` sets it: not tracked, so not a metric of the model twice.
    set_untracked(model, "_loss_tracker", _LoggedWithTheTerms())


class NeverRematerialized:
    """Keeps a model's own `call` out of `keras.RematScope`.

    A distiller's `call` hands what its models' layers returned to
    `compute_loss`; inside a rematerialised function those would be the
    function's inner values (on JAX, leaked tracers). Its models' layers
    are rematerialised as they were built.
    """

    def rematerialized_call(self, layer_call, *args, **kwargs):
        return layer_call


# Under `tf.distribute` (TensorFlow), each replica's gradients are summed, so
# Keras divides each replica's loss by the number of replicas: its compiled
# loss comes scaled so, and `train_step` unscales the value it logs. A model
# overriding `compute_loss` returns its total scaled the same way. Both are
# the identity on one replica and on the other backends, whose data-parallel
# steps (`keras.distribution`, DistributedDataParallel) average instead.
try:
    from keras.src.losses.loss import scale_loss_for_distribution
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # pragma: no cover - depends on the installed Keras

    def scale_loss_for_distribution(value):
        return value

    def unscale_loss_for_distribution(value):
        return value



# -- Steps that are not finite apply nothing -------------------------------
#
# Keras's `LossScaleOptimizer` skips every step whose gradients are not
# finite, without advancing the optimizer it wraps, on every backend and
# under `tf.distribute` (its `_tf_apply` merges the replicas' checks). A
# subclass that never scales (its finite steps are the wrapped optimizer's
# own `apply` and `stateless_apply`) keeps only that.
from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer  # noqa: E402


@keras.saving.register_keras_serializable(package="keras_distill")
class SkipsNonFiniteSteps(LossScaleOptimizer):
    """Wraps an optimizer so that a step whose gradients are not finite
    changes neither the weights nor the optimizer's state.

    A step is skipped when the sum of its gradients is NaN or infinite: when
    any gradient is, or when they are so large that their float32 sum
    overflows; `skipped_steps` counts them. Every other step is the wrapped
    optimizer's, unchanged.

    Args:
        inner_optimizer: the optimizer that applies the finite steps.
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        kwargs.pop("initial_scale", None)  # saved by the parent's config
        kwargs.pop("dynamic_growth_steps", None)
        super().__init__(
            inner_optimizer, initial_scale=1.0,
            name=name or f"{inner_optimizer.name}_finite_steps", **kwargs,
        )

    def scale_loss(self, loss):
        return loss

    def check_finite(self, grads):
        # One reduction per gradient, where the parent takes two.
        sums = [ops.cast(ops.sum(g), "float32") for g in grads if g is not None]
        if not sums:
            return ops.convert_to_tensor(True)
        return ops.isfinite(ops.sum(ops.stack(sums)))

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    @property
    def skipped_steps(self):
        """How many steps were skipped, a variable (the parent's counter of
        steps, which nothing else here uses)."""
        return self.step_counter

    def _stateful_handle_non_finite_grads(self):
        self.step_counter.assign_add(1)

    def _stateless_handle_finite_grads(self, optimizer_variables, grads, trainable_variables):
        own = len(self._variables)  # the parent's scale and counter, unused
        new_trainable, new_inner = self.inner_optimizer.stateless_apply(
            optimizer_variables[own:], grads, trainable_variables
        )
        return new_trainable, list(optimizer_variables[:own]) + list(new_inner)

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        counter = [id(v) for v in self.variables].index(id(self.step_counter))
        new = list(optimizer_variables)
        new[counter] = new[counter] + 1
        return trainable_variables, new


def skipping_non_finite_steps(optimizer):
    """`optimizer` (an instance or identifier), wrapped in
    `SkipsNonFiniteSteps` unless it skips such steps already."""
    optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, LossScaleOptimizer):
        return optimizer
    return SkipsNonFiniteSteps(optimizer)
