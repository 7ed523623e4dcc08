"""The model zoo: ResNets and Local Relation Networks (Hu et al., ICCV 2019), built by name.

Public API: ``create_model``, ``list_models``, ``LocalRelation2d``, ``count_params``, ``count_flops``.
"""

from lrrobust.models.flops import count_flops, count_params
from lrrobust.models.local_relation import GeometricPrior, LocalRelation2d
from lrrobust.models.registry import create_model, default_config, list_models
from lrrobust.models.resnet import ResNet

__all__ = [
    "GeometricPrior",
    "LocalRelation2d",
    "ResNet",
    "count_flops",
    "count_params",
    "create_model",
    "default_config",
    "list_models",
]
