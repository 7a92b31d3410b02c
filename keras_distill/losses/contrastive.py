"""Contrastive representation distillation, with fixed-size queues."""

import keras
import numpy as np
from keras import ops

from keras_distill.losses.base import BatchLoss
from keras_distill.losses.base import weighted_mean
from keras_distill.losses.relation import _flat
from keras_distill.losses.relation import _l2_normalize


def _unit_rows(shape, dtype=None):
    """Random unit vectors: the queues' contents before any batch arrives."""
    rows = np.random.default_rng(0).normal(size=shape)
    return ops.convert_to_tensor(
        rows / np.linalg.norm(rows, axis=-1, keepdims=True), dtype or "float32"
    )


def info_nce(anchors, positives, negatives, temperature):
    """InfoNCE per anchor: cross-entropy of picking the positive.

    Args:
        anchors: unit vectors `(B, E)`.
        positives: the matching unit vectors `(B, E)`.
        negatives: unit vectors `(K, E)` that match no anchor.
        temperature: the softmax temperature.

    Returns:
        `-log softmax([a . p, a . n_1, ..., a . n_K] / temperature)[0]`,
        shape `(B,)`.
    """
    positive = ops.sum(anchors * positives, axis=-1, keepdims=True)
    scores = ops.concatenate(
        [positive, ops.matmul(anchors, ops.transpose(negatives))], axis=-1
    ) / temperature
    return ops.logsumexp(scores, axis=-1) - scores[:, 0]


@keras.saving.register_keras_serializable(package="keras_distill")
class CRD(BatchLoss):
    """Contrastive representation distillation (Tian et al. 2020).

    Learned heads map the teacher's and the student's features to unit
    embeddings of `embedding_dim`. For each sample, the student's embedding
    must pick out the teacher's embedding of the same sample against
    `queue_size` teacher embeddings of earlier batches, and the other way
    round (InfoNCE at `temperature`; the two terms are summed). The queues
    are first-in-first-out buffers of fixed size, so memory does not grow
    with the dataset, unlike the paper's memory bank of every sample; they
    are filled by training steps only (not by `evaluate`), with every sample
    of the batch (sample weights weigh the loss, not the queues), and saved
    with the Distiller. The heads train with the student and are left out
    of the exported student.

    Args:
        teacher: the teacher's features to embed (the penultimate layer in
            the paper): a layer path or source; `None` for its output.
            Defaults to `None`.
        student: the matching student features. Defaults to `None`.
        embedding_dim: width of the embeddings. Defaults to 128.
        queue_size: negatives per queue; at least the batch size (a larger
            batch is refused). Defaults to 4096.
        temperature: the InfoNCE temperature. Defaults to 0.07.
        name: the loss's name in the logs. Defaults to `"crd"`.

    Example:

    ```python
    crd = keras_distill.losses.CRD("pool", "pool")
    distiller = keras_distill.Distiller(
        teacher, student, [KD(temperature=4.0), crd], distillation_loss_weights=[0.9, 0.8]
    )
    ```

    Reference:
        Tian, Krishnan and Isola, "Contrastive Representation
        Distillation", ICLR 2020.
    """

    #: The InfoNCE temperature: a plain number, not a variable, so that a
    #: `TemperatureScheduler` of the KD losses beside it leaves it alone.
    temperature = None

    def __init__(
        self,
        teacher=None,
        student=None,
        *,
        embedding_dim=128,
        queue_size=4096,
        temperature=0.07,
        name=None,
        **kwargs,
    ):
        super().__init__(teacher, student, name=name, **kwargs)
        if len(self.teacher_sources) != 1:
            raise ValueError(
                "CRD embeds one tensor of each model; give one teacher and "
                "one student source."
            )
        if embedding_dim < 1 or queue_size < 1 or temperature <= 0:
            raise ValueError(
                "CRD: `embedding_dim` and `queue_size` must be >= 1 and "
                f"`temperature` > 0; received {embedding_dim}, {queue_size} "
                f"and {temperature}."
            )
        self.embedding_dim = int(embedding_dim)
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.built = False

    def build(self, teacher_specs, student_specs):
        """Creates the heads and the queues from the features' shapes."""
        # float32 like the loss, whatever the global dtype policy.
        self.teacher_head = keras.layers.Dense(
            self.embedding_dim, name="teacher_head", dtype="float32"
        )
        self.student_head = keras.layers.Dense(
            self.embedding_dim, name="student_head", dtype="float32"
        )
        for head, (spec,) in (
            (self.teacher_head, teacher_specs),
            (self.student_head, student_specs),
        ):
            head.build((None, int(np.prod(spec.shape[1:]))))
        queue_shape = (self.queue_size, self.embedding_dim)
        self.teacher_queue = self.add_weight(
            name="teacher_queue", shape=queue_shape, initializer=_unit_rows,
            trainable=False,
        )
        self.student_queue = self.add_weight(
            name="student_queue", shape=queue_shape, initializer=_unit_rows,
            trainable=False,
        )
        self.queue_position = self.add_weight(
            name="queue_position", shape=(), dtype="int32", initializer="zeros",
            trainable=False,
        )
        self.built = True

    def embed(self, teacher, student):
        """The unit embeddings `(B, embedding_dim)` of both models' features."""
        return (
            _l2_normalize(self.teacher_head(_flat(teacher))),
            _l2_normalize(self.student_head(_flat(student))),
        )

    def compute(self, context):
        batch = context.teacher.shape[0]
        if batch is not None and batch > self.queue_size:
            raise ValueError(
                f"CRD(queue_size={self.queue_size}) holds fewer negatives than "
                f"a batch of {batch} samples adds to it; use a queue_size of "
                f"at least the batch size (e.g. {batch}) or smaller batches."
            )
        z_t, z_s = self.embed(context.teacher, context.student)
        # Copies: the backward pass must see the queues as they were, after
        # `_enqueue` has overwritten them in place (PyTorch checks this).
        teacher_negatives = ops.copy(self.teacher_queue)
        student_negatives = ops.copy(self.student_queue)
        per_sample = info_nce(
            z_s, z_t, teacher_negatives, self.temperature
        ) + info_nce(z_t, z_s, student_negatives, self.temperature)
        if context.training:
            self._enqueue(ops.stop_gradient(z_t), ops.stop_gradient(z_s))
        return weighted_mean(per_sample, context.sample_weight)

    def _enqueue(self, z_t, z_s):
        """Replaces the oldest queue entries with this batch's embeddings."""
        batch = ops.shape(z_t)[0]
        rows = (self.queue_position + ops.arange(batch, dtype="int32")) % self.queue_size
        rows = ops.expand_dims(rows, -1)
        self.teacher_queue.assign(ops.scatter_update(self.teacher_queue, rows, z_t))
        self.student_queue.assign(ops.scatter_update(self.student_queue, rows, z_s))
        self.queue_position.assign(
            (self.queue_position + ops.cast(batch, "int32")) % self.queue_size
        )

    def get_config(self):
        config = super().get_config()
        return {
            **config,
            "embedding_dim": self.embedding_dim,
            "queue_size": self.queue_size,
            "temperature": self.temperature,
        }
