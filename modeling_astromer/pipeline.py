"""The light-curve feature-extraction pipeline under this package's own task name, and a one-call loader."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoModel
from transformers import pipeline as hf_pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .pipeline_astromer import LightCurveFeatureExtractionPipeline

__all__ = ["PIPELINE_TASK", "LightCurveFeatureExtractionPipeline", "load_pipeline", "register_pipeline_task"]

#: The task name this package registers (the global "feature-extraction" task is left to the text pipeline).
PIPELINE_TASK = "light-curve-feature-extraction"


def register_pipeline_task() -> None:
    """Register :data:`PIPELINE_TASK`, so ``pipeline(PIPELINE_TASK, model=...)`` needs no remote code.

    Re-registering ``"feature-extraction"`` instead would replace the text pipeline for the whole process.
    """
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=LightCurveFeatureExtractionPipeline, pt_model=AutoModel, type="multimodal"
    )


def load_pipeline(model: str | os.PathLike, **kwargs: Any) -> LightCurveFeatureExtractionPipeline:
    """``pipeline(PIPELINE_TASK, model=model, pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs)``.

    Args:
        model: a folder written by ``save_pretrained``/the release command, or a Hub repo id.
        kwargs: passed to :func:`transformers.pipeline` (``device``, ``batch_size``, ``revision``, ...).
    """
    return hf_pipeline(PIPELINE_TASK, model=str(model), pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs)
