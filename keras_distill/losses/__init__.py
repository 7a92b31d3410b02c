"""Distillation losses: each a `keras.ops` function and a serializable class.

Every class takes `teacher=` and `student=` first (what it compares; see
`keras_distill.sources`), then keyword hyperparameters. The bases
(`DistillationLoss`, `PerSampleLoss`, `BatchLoss`), `LossContext` and the
functions are the building blocks of new losses.
"""

from keras_distill.losses.attention import AttentionTransfer
from keras_distill.losses.attention import TransformerAttention
from keras_distill.losses.attention import attention_map_loss
from keras_distill.losses.attention import attention_transfer
from keras_distill.losses.attention import spatial_attention
from keras_distill.losses.attention import uniform_layer_map
from keras_distill.losses.base import BatchLoss
from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.base import LossContext
from keras_distill.losses.base import PerSampleLoss
from keras_distill.losses.base import weighted_mean
from keras_distill.losses.chunked import chunked_token_distillation
from keras_distill.losses.contrastive import CRD
from keras_distill.losses.contrastive import info_nce
from keras_distill.losses.curriculum import CTKD
from keras_distill.losses.curriculum import curriculum_reversal
from keras_distill.losses.feature import FitNet
from keras_distill.losses.feature import HiddenCosine
from keras_distill.losses.feature import connector_for
from keras_distill.losses.feature import hidden_cosine
from keras_distill.losses.keras_compat import FeatureDistillation
from keras_distill.losses.keras_compat import LogitsDistillation
from keras_distill.losses.relation import PKT
from keras_distill.losses.relation import RKD
from keras_distill.losses.relation import CorrelationCongruence
from keras_distill.losses.relation import SimilarityPreserving
from keras_distill.losses.relation import correlation_congruence
from keras_distill.losses.relation import pairwise_distances
from keras_distill.losses.relation import pkt
from keras_distill.losses.relation import rkd_angle
from keras_distill.losses.relation import rkd_distance
from keras_distill.losses.relation import similarity_preserving
from keras_distill.losses.response import DIST
from keras_distill.losses.response import DKD
from keras_distill.losses.response import KD
from keras_distill.losses.response import dist
from keras_distill.losses.response import dkd
from keras_distill.losses.response import kd
from keras_distill.losses.response import soft_log_probabilities
from keras_distill.losses.response import standardize_logits

#: The losses to distil with, by family (error messages list them).
LOSSES = [
    "KD", "DKD", "DIST", "CTKD",
    "FitNet", "HiddenCosine", "AttentionTransfer", "TransformerAttention",
    "RKD", "SimilarityPreserving", "PKT", "CorrelationCongruence", "CRD",
    "LogitsDistillation", "FeatureDistillation",
]

__all__ = [
    "AttentionTransfer",
    "BatchLoss",
    "CRD",
    "CTKD",
    "CorrelationCongruence",
    "DIST",
    "DKD",
    "DistillationLoss",
    "FeatureDistillation",
    "FitNet",
    "HiddenCosine",
    "KD",
    "LogitsDistillation",
    "LossContext",
    "PKT",
    "PerSampleLoss",
    "RKD",
    "SimilarityPreserving",
    "TransformerAttention",
    "attention_map_loss",
    "attention_transfer",
    "chunked_token_distillation",
    "connector_for",
    "correlation_congruence",
    "curriculum_reversal",
    "dist",
    "dkd",
    "hidden_cosine",
    "info_nce",
    "kd",
    "pairwise_distances",
    "pkt",
    "rkd_angle",
    "rkd_distance",
    "similarity_preserving",
    "soft_log_probabilities",
    "spatial_attention",
    "standardize_logits",
    "uniform_layer_map",
    "weighted_mean",
]
