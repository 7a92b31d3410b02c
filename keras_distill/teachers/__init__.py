"""Teachers: the base class and hooks, ensembles, other modalities, stored
outputs and self-copies of the student."""

from keras_distill.teachers.base import Teacher
from keras_distill.teachers.base import TeacherHooks
from keras_distill.teachers.cross_modal import CrossModal
from keras_distill.teachers.ensembles import MultiTeacher
from keras_distill.teachers.precomputed import Precomputed
from keras_distill.teachers.precomputed import load_precomputed
from keras_distill.teachers.precomputed import precompute
from keras_distill.teachers.self_copies import MovingAverage
from keras_distill.teachers.self_copies import Snapshot
from keras_distill.teachers.self_copies import StudentCopy

__all__ = [
    "CrossModal",
    "MovingAverage",
    "MultiTeacher",
    "Precomputed",
    "Snapshot",
    "StudentCopy",
    "Teacher",
    "TeacherHooks",
    "load_precomputed",
    "precompute",
]
