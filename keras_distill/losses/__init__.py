"""Distillation losses: each a `keras.ops` function and a serializable class."""

from keras_distill.losses.base import DistillationLoss
from keras_distill.losses.base import weighted_mean
from keras_distill.losses.keras_compat import FeatureDistillation
from keras_distill.losses.keras_compat import LogitsDistillation
from keras_distill.losses.response import DIST
from keras_distill.losses.response import DKD
from keras_distill.losses.response import KD
from keras_distill.losses.response import dist
from keras_distill.losses.response import dkd
from keras_distill.losses.response import kd
from keras_distill.losses.response import soft_log_probabilities

__all__ = [
    "DIST",
    "DKD",
    "DistillationLoss",
    "FeatureDistillation",
    "KD",
    "LogitsDistillation",
    "dist",
    "dkd",
    "kd",
    "soft_log_probabilities",
    "weighted_mean",
]

#: The public loss classes, for error messages that list them.
CLASSES = [name for name in __all__ if name[0].isupper()]
