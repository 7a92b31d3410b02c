"""Deep mutual learning: peers that teach each other within one `fit`."""

import keras
from keras import ops

from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.response import KD
from keras_distill.taps import ForwardPass
from keras_distill.training import DistillationModel
from keras_distill.training import batch_size_of
from keras_distill.validation import check_built
from keras_distill.validation import check_model
from keras_distill.validation import check_weight


@keras.saving.register_keras_serializable(package="keras_distill")
class MutualLearning(DistillationModel):
    """Trains several models at once, each one learning from the others.

    Deep Mutual Learning has no pretrained teacher: K peers learn together
    from the labels and from one another. Peer k minimises

        student_loss_weight * loss(labels, peer_k)
        + distillation_loss_weight * mean over j != k of
          distillation_loss(teacher=peer_j, student=peer_k),

    where the other peers' predictions are targets (no gradient flows into
    peer j through peer k's term). `fit` minimises the sum of the peers'
    losses; as each peer's weights enter only its own terms, one step on the
    sum is a step of every peer on its own loss (the paper updates the
    peers in turn within a step; here they are updated together, from the
    same predictions).

    Every peer runs once per step, on the same inputs. `call` and `predict`
    return a dict `{peer name: outputs}`. The loss and metrics given to
    `compile` apply to each peer; `fit` and `evaluate` log, per peer,
    `<peer>_loss` (its loss on the labels), `<peer>_<metric>` and
    `<peer>_<distillation loss name>` (e.g. `peer_1_kd`, its mean over the
    other peers, unweighted), besides the total `loss`. Both weights are
    non-trainable variables, so `keras_distill.callbacks` schedule them
    (and the loss's temperature) as they do a `Distiller`'s.

    Args:
        models: two or more built Keras models with distinct names and the
            same output shape; they may differ in architecture.
        distillation_loss: a `keras_distill` loss that compares the models'
            outputs. Defaults to `None`: `KD(temperature=1.0)`, the paper's
            `KL(p_j || p_k)`.
        distillation_loss_weight: weight >= 0 of the distillation term.
            Defaults to 1.0, as in the paper.
        student_loss_weight: weight >= 0 of each peer's loss on the
            labels. Defaults to 1.0.
        name: the model's name. Defaults to `"mutual_learning"`.
        **kwargs: other `keras.Model` arguments.

    Example:

    ```python
    peers = keras_distill.MutualLearning([make_cnn("peer_1"), make_cnn("peer_2")])
    peers.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    peers.fit(x_train, y_train, epochs=10)  # logs peer_1_accuracy, ...
    best = peers.peers[0]
    ```

    Reference:
        Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018.
    """

    def __init__(
        self,
        models,
        distillation_loss=None,
        distillation_loss_weight=1.0,
        student_loss_weight=1.0,
        name="mutual_learning",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        models = list(models)
        if len(models) < 2:
            raise ValueError(
                f"MutualLearning trains two or more peers; received {len(models)}."
                " To learn from one trained model, use keras_distill.Distiller."
            )
        for i, model in enumerate(models):
            check_model(model, f"peer {i}")
            check_built(model, f"peer {i}")
        if len({id(m) for m in models}) != len(models):
            raise ValueError(
                "MutualLearning received the same model object more than once; "
                "each peer must be a separate model (build one per peer)."
            )
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(
                "MutualLearning's peers need distinct names (their outputs and "
                f"metrics are logged by name); received {names}. Pass name= "
                "when building each model."
            )
        _check_output_shapes(models)
        loss = KD(temperature=1.0) if distillation_loss is None else distillation_loss
        if not isinstance(loss, DistillationLoss) or not loss.reads_predictions():
            raise TypeError(
                "MutualLearning's distillation_loss must be a keras_distill loss"
                " that compares the peers' outputs (KD, ReverseKL, DKD, DIST,"
                f" ...); received {loss!r}."
            )
        check_weight(distillation_loss_weight, "distillation_loss_weight")
        check_weight(student_loss_weight, "student_loss_weight")

        self.peers = models
        self.peer_names = names
        self._set_losses(
            [loss], [loss.name], [distillation_loss_weight], student_loss_weight,
            [f"{peer}_{loss.name}" for peer in names],
        )
        self.built = True

    def call(self, inputs, training=None):
        """Runs every peer; returns `{peer name: outputs}`."""
        return {
            name: peer(inputs, training=training)
            for name, peer in zip(self.peer_names, self.peers)
        }

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training; `loss` and `metrics` apply to every peer.

        Args:
            optimizer: the optimizer of all peers. Defaults to `"adam"`.
            loss: each peer's loss on the labels; or a dict
                `{peer name: loss}` to give peers different losses.
            metrics: metrics computed for each peer; or a dict per peer.
            **kwargs: other `keras.Model.compile` arguments;
                `weighted_metrics` apply to each peer like `metrics`.
        """
        if "weighted_metrics" in kwargs:
            kwargs["weighted_metrics"] = self._per_peer_objects(
                kwargs["weighted_metrics"]
            )
        super().compile(
            optimizer=optimizer,
            loss=self._per_peer_objects(loss),
            metrics=self._per_peer_objects(metrics),
            **kwargs,
        )

    def _per_peer_objects(self, value):
        """`{peer: a copy of value}`, unless `value` is already per peer."""
        if value is None or (
            isinstance(value, dict) and set(value) == set(self.peer_names)
        ):
            return value

        def copy(obj):  # metric objects hold state: one per peer
            if isinstance(obj, (keras.metrics.Metric, keras.losses.Loss)):
                return type(obj).from_config(obj.get_config())
            return obj

        return {
            name: keras.tree.map_structure(copy, value)
            if isinstance(value, (list, tuple))
            else copy(value)
            for name in self.peer_names
        }

    def _per_peer(self, value):
        return None if value is None else {name: value for name in self.peer_names}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        outputs = [y_pred[name] for name in self.peer_names]
        supervised = self.label_loss(
            self._per_peer(y), y_pred, self._per_peer(sample_weight)
        )
        regularization = self.regularization()

        (loss,) = self.distillation_losses
        passes = [ForwardPass(o, {}) for o in outputs]
        targets = [
            ForwardPass(keras.tree.map_structure(ops.stop_gradient, o), {})
            for o in outputs
        ]
        values = []
        for k, student in enumerate(passes):
            terms = [
                loss.from_passes(
                    target, student, labels=y, sample_weight=sample_weight,
                    inputs=x, training=training,
                )
                for j, target in enumerate(targets)
                if j != k
            ]
            values.append(ops.sum(ops.stack(terms)) / len(terms))

        weight = self._loss_weights[0].variable
        return self.finish_step(
            supervised, weight * ops.sum(ops.stack(values)), regularization,
            values, batch_size_of(outputs[0]),
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x, self._per_peer(y), y_pred, self._per_peer(sample_weight)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "models": [keras.saving.serialize_keras_object(m) for m in self.peers],
                "distillation_loss": keras.saving.serialize_keras_object(
                    self.distillation_losses[0]
                ),
                "distillation_loss_weight": self.distillation_loss_weights[0],
                "student_loss_weight": self.student_loss_weight,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["models"] = [
            keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
            for m in config["models"]
        ]
        config["distillation_loss"] = keras.saving.deserialize_keras_object(
            config["distillation_loss"], custom_objects=custom_objects
        )
        return cls(**config)


def _check_output_shapes(models):
    shapes = {}
    for model in models:
        outputs = getattr(model, "outputs", None)
        if outputs:
            shapes[model.name] = tuple(outputs[0].shape[1:])
    if len(set(shapes.values())) > 1:
        raise ValueError(
            "MutualLearning's peers learn from each other's predictions, so "
            f"their outputs must have the same shape; received {shapes}."
        )
