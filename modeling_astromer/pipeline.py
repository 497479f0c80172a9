"""The light-curve feature-extraction pipeline under this package's own task name, and a one-call loader."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModel
from transformers import pipeline as hf_pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .pipeline_astromer import LightCurveFeatureExtractionPipeline

__all__ = [
    "PIPELINE_TASK",
    "LightCurveFeatureExtractionPipeline",
    "load_pipeline",
    "packed_attention_for",
    "register_pipeline_task",
]

#: The task name this package registers (the global "feature-extraction" task is left to the text pipeline).
PIPELINE_TASK = "light-curve-feature-extraction"


def register_pipeline_task() -> None:
    """Register :data:`PIPELINE_TASK`, so ``pipeline(PIPELINE_TASK, model=...)`` needs no remote code.

    Re-registering ``"feature-extraction"`` instead would replace the text pipeline for the whole process.
    """
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=LightCurveFeatureExtractionPipeline, pt_model=AutoModel, type="multimodal"
    )


def packed_attention_for(config: Any, device: Any = None) -> str | None:
    """The attention implementation that runs a model's windows packed back to back on ``device``:
    ``"astromer_varlen"`` (the Triton kernel) on a GPU, ``"astromer_blocked"`` elsewhere; ``None`` for Astromer 1,
    whose outputs depend on padding."""
    if getattr(config, "attention_bias_mode", None) == "a1_query_key_bias":
        return None
    if device is None:
        return "astromer_blocked"
    if isinstance(device, int):
        device = "cpu" if device < 0 else f"cuda:{device}"
    return "astromer_varlen" if torch.device(device).type == "cuda" else "astromer_blocked"


def load_pipeline(
    model: str | os.PathLike, attn_implementation: str | None = "auto", **kwargs: Any
) -> LightCurveFeatureExtractionPipeline:
    """``pipeline(PIPELINE_TASK, model=model, pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs)``.

    Args:
        model: a folder written by ``save_pretrained``/the release command, or a Hub repo id.
        attn_implementation: ``"auto"`` runs Astromer 2 with the attention implementation that packs windows
            (:func:`packed_attention_for`; with ``batch_size > 1`` short windows then cost only their own length) and
            Astromer 1 with transformers' default; ``None`` keeps transformers' default; any other name is used as is.
        kwargs: passed to :func:`transformers.pipeline` (``device``, ``batch_size``, ``revision``, ...).
    """
    if attn_implementation == "auto":
        config = AutoConfig.from_pretrained(str(model), revision=kwargs.get("revision"))
        attn_implementation = packed_attention_for(config, kwargs.get("device"))
    if attn_implementation is not None:
        model_kwargs = dict(kwargs.pop("model_kwargs", None) or {})
        model_kwargs.setdefault("attn_implementation", attn_implementation)
        kwargs["model_kwargs"] = model_kwargs
    return hf_pipeline(PIPELINE_TASK, model=str(model), pipeline_class=LightCurveFeatureExtractionPipeline, **kwargs)
