"""Public entry point for the light-curve feature-extraction pipeline.

``from modeling_astromer.pipeline import LightCurveFeatureExtractionPipeline``, and the one-call helper
:func:`load_pipeline`, also reachable as ``modeling_astromer.load_pipeline(model_id)`` and, for brevity, by calling
this module: ``modeling_astromer.pipeline(model_id)``.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from .pipeline_astromer import POOLING_MODES, LightCurveFeatureExtractionPipeline

__all__ = ["PIPELINE_TASK", "POOLING_MODES", "LightCurveFeatureExtractionPipeline", "load_pipeline"]

#: The task name this package registers (the global "feature-extraction" task is left to the text pipeline).
PIPELINE_TASK = "light-curve-feature-extraction"


def load_pipeline(model: str | os.PathLike, **kwargs: Any) -> LightCurveFeatureExtractionPipeline:
    """``pipeline(PIPELINE_TASK, model=model, pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs)``.

    Args:
        model: a folder written by ``save_pretrained``/the release script, or a Hub repo id.
        kwargs: passed to :func:`transformers.pipeline` (``device``, ``batch_size``, ``revision``, ...).
    """
    from transformers import pipeline as hf_pipeline

    return hf_pipeline(
        PIPELINE_TASK, model=str(model), pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs
    )


class _CallableModule(types.ModuleType):
    """Lets ``modeling_astromer.pipeline(model_id)`` work while ``modeling_astromer.pipeline`` stays this module
    (``from modeling_astromer.pipeline import LightCurveFeatureExtractionPipeline``)."""

    def __call__(self, model: str | os.PathLike, **kwargs: Any) -> LightCurveFeatureExtractionPipeline:
        return load_pipeline(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
