"""The public API: what `import keras_distill` promises."""

import keras_distill
from keras_distill import callbacks
from keras_distill import losses
from keras_distill import teachers


def test_public_names():
    assert sorted(keras_distill.__all__) == [
        "DistillationLoss", "Distiller", "FeatureDistillation",
        "LogitsDistillation", "MutualLearning", "born_again", "callbacks",
        "losses", "report", "teachers",
    ]
    assert sorted(teachers.__all__) == [
        "CrossModal", "MovingAverage", "MultiTeacher", "Precomputed",
        "Snapshot", "load_precomputed", "precompute",
    ]
    assert sorted(callbacks.__all__) == ["LossWeightScheduler", "TemperatureScheduler"]
    assert losses.CLASSES == [
        "AttentionTransfer", "CRD", "CorrelationCongruence", "DIST", "DKD",
        "DistillationLoss", "FeatureDistillation", "FitNet", "HiddenCosine",
        "KD", "LayerPairLoss", "LogitsDistillation", "PKT", "RKD",
        "RelationLoss", "SimilarityPreserving", "TransformerAttention",
    ]
    for module in (keras_distill, callbacks, losses, teachers):
        missing = set(module.__all__) - set(dir(module))
        assert not missing, (module.__name__, missing)


def test_losses_are_distillation_losses():
    for name in losses.CLASSES:
        assert issubclass(getattr(losses, name), keras_distill.DistillationLoss)
