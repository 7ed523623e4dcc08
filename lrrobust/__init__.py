"""lrrobust: Local Relation Networks (Hu et al., ICCV 2019) and their robustness to adversarial attacks."""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load_checkpoint"]


def load_checkpoint(path, map_location=None):
    """Rebuild a model from a checkpoint alone, in eval mode, taking [0, 1] images (see lrrobust.checkpoint)."""
    from lrrobust.checkpoint import load_checkpoint as _load

    return _load(path, map_location=map_location)


def __getattr__(name):
    """``lrrobust.evaluate`` (``lrrobust.evaluation.api.evaluate``), imported on first use so ``import lrrobust``
    stays fast (no torch)."""
    if name == "evaluate":
        from lrrobust.evaluation.api import evaluate

        return evaluate
    raise AttributeError(f"module 'lrrobust' has no attribute {name!r}")
