"""keras-distill: knowledge distillation for Keras 3 on TensorFlow, JAX and PyTorch."""

from keras_distill import callbacks
from keras_distill import losses
from keras_distill import sources
from keras_distill import teachers
from keras_distill.born_again import born_again
from keras_distill.distiller import Distiller
from keras_distill.labels import UNLABELLED
from keras_distill.losses import DistillationLoss
from keras_distill.losses import FeatureDistillation
from keras_distill.losses import LogitsDistillation
from keras_distill.mutual_learning import MutualLearning
from keras_distill.reporting import report

__version__ = "0.1.0"

__all__ = [
    "DistillationLoss",
    "Distiller",
    "FeatureDistillation",
    "LogitsDistillation",
    "MutualLearning",
    "UNLABELLED",
    "born_again",
    "callbacks",
    "losses",
    "report",
    "sources",
    "teachers",
]
