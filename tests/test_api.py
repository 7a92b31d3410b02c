"""The public API: what `import keras_distill` promises."""

import inspect

import keras

import keras_distill
from keras_distill import callbacks
from keras_distill import losses
from keras_distill import sources
from keras_distill import teachers

BASES = ("BatchLoss", "DistillationLoss", "PerSampleLoss")


def test_public_names():
    assert sorted(keras_distill.__all__) == [
        "DistillationLoss", "Distiller", "FeatureDistillation",
        "LogitsDistillation", "MutualLearning", "UNLABELLED", "born_again", "callbacks",
        "losses", "report", "sources", "teachers",
    ]
    assert sorted(teachers.__all__) == [
        "CrossModal", "MovingAverage", "MultiTeacher", "Precomputed",
        "Snapshot", "StudentCopy", "Teacher", "TeacherHooks",
        "load_precomputed", "precompute",
    ]
    assert sorted(callbacks.__all__) == ["LossWeightScheduler", "TemperatureScheduler"]
    assert sorted(losses.LOSSES) == [
        "AttentionTransfer", "CRD", "CTKD", "CorrelationCongruence", "DIST", "DKD",
        "FeatureDistillation", "FitNet", "HiddenCosine", "KD",
        "LogitsDistillation", "PKT", "RKD", "SimilarityPreserving",
        "TransformerAttention",
    ]
    assert len(set(losses.LOSSES)) == len(losses.LOSSES)
    for module in (keras_distill, callbacks, losses, teachers):
        missing = set(module.__all__) - set(dir(module))
        assert not missing, (module.__name__, missing)
    for name in ("Source", "Output", "AllOutputs", "Layer", "Attention", "Group"):
        assert issubclass(getattr(sources, name), sources.Source), name


def _is_concrete(cls):
    """Whether `cls` implements the loss, not only inherits a base's stub."""
    if issubclass(cls, losses.PerSampleLoss):
        return cls.per_sample is not losses.PerSampleLoss.per_sample
    if cls.compute not in (losses.DistillationLoss.compute, losses.BatchLoss.compute):
        return True
    return cls.compute_loss is not losses.DistillationLoss.compute_loss


def test_losses_lists_the_concrete_losses_and_not_the_bases():
    for name in losses.LOSSES:
        cls = getattr(losses, name)
        assert inspect.isclass(cls) and issubclass(cls, losses.DistillationLoss), name
        assert name not in BASES
        assert _is_concrete(cls), name
        assert keras.saving.get_registered_name(cls) == f"keras_distill>{name}"
        assert name in losses.__all__
    # The bases and the context are exported, as building blocks, but are
    # not losses to distil with.
    for name in (*BASES, "LossContext"):
        assert name in losses.__all__ and name not in losses.LOSSES
    for name in BASES:
        assert not _is_concrete(getattr(losses, name)), name
    assert issubclass(losses.PerSampleLoss, losses.DistillationLoss)
    assert issubclass(losses.BatchLoss, losses.DistillationLoss)
    assert losses.DistillationLoss is keras_distill.DistillationLoss
    assert list(losses.LossContext._fields) == [
        "teacher", "student", "labels", "sample_weight", "mask", "inputs",
        "training", "pair",
    ]
    # Every exported loss class is listed: none is left out of LOSSES.
    exported = {
        name for name in losses.__all__
        if inspect.isclass(getattr(losses, name))
        and issubclass(getattr(losses, name), losses.DistillationLoss)
    }
    assert exported - set(BASES) == set(losses.LOSSES)
