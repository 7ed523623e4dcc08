"""The model zoo: ResNets and Local Relation Networks (Hu et al., ICCV 2019), built by name.

Public API: ``create_model``, ``list_models``, ``model_info``, ``register_model``, ``LocalRelation2d``,
``count_params``, ``count_flops``. Every module of this package is imported below, so a module that registers
networks (``zoo``: the paper's; a new architecture: one file of its own) makes them known to the CLI, training, the
report and the tests.
"""

import importlib
import pkgutil

from lrrobust.models.flops import count_flops, count_params
from lrrobust.models.local_relation import GeometricPrior, LocalRelation2d
from lrrobust.models.registry import (
    ModelInfo,
    create_model,
    find_model,
    list_models,
    model_info,
    register_model,
    registered_models,
)
from lrrobust.models.resnet import ResNet

# The paper's networks (zoo) first, then every other module: `lrrobust models` lists networks in that order.
for _name in ("zoo", *(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "GeometricPrior",
    "LocalRelation2d",
    "ModelInfo",
    "ResNet",
    "count_flops",
    "count_params",
    "create_model",
    "find_model",
    "list_models",
    "model_info",
    "register_model",
    "registered_models",
]
