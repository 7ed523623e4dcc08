"""Regular and PGD adversarial training (paper appendix, Sec. 6.2): ``TrainConfig``, presets and ``train``."""

from lrrobust.training.config import PRESETS, TrainConfig, resolve_config
from lrrobust.training.loop import TrainingDiverged, train

__all__ = ["PRESETS", "TrainConfig", "TrainingDiverged", "resolve_config", "train"]
