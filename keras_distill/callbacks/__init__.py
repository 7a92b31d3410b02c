"""Callbacks that schedule what a Distiller's training step reads."""

from keras_distill.callbacks.schedulers import LossWeightScheduler
from keras_distill.callbacks.schedulers import TemperatureScheduler

__all__ = ["LossWeightScheduler", "TemperatureScheduler"]
