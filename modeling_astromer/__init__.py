"""Astromer 2 for the Hugging Face ecosystem.

Importing this package registers the Astromer config, models and feature extractor with the `transformers` Auto
classes, so `AutoModel.from_pretrained("astromer/astromer-2")` works without `trust_remote_code`, and registers the
packed-sequence attention implementation `"astromer_varlen"` when `astromer_kernels` is available.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSequenceClassification,
)

from .configuration_astromer import AstromerConfig
from .feature_extraction_astromer import AstromerFeatureExtractor
from .masking import AstromerMaskingCollator
from .modeling_astromer import (
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
    AstromerModel,
    AstromerPreTrainedModel,
    compute_loss_weights,
)
from .pipeline import PIPELINE_TASK, LightCurveFeatureExtractionPipeline, load_pipeline

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    AutoConfig.register("astromer", AstromerConfig, exist_ok=True)
    AutoModel.register(AstromerConfig, AstromerModel, exist_ok=True)
    AutoModelForSequenceClassification.register(AstromerConfig, AstromerForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(AstromerConfig, AstromerFeatureExtractor, exist_ok=True)


def _register_pipeline() -> None:
    from transformers.pipelines import PIPELINE_REGISTRY

    # our own task name: re-registering "feature-extraction" would replace the text pipeline process-wide
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=LightCurveFeatureExtractionPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )


def _register_varlen_attention() -> None:
    try:
        from astromer_kernels.hf_attention import register_astromer_varlen
    except ImportError:  # the kernels package is part of this distribution; tolerate partial installs
        return
    register_astromer_varlen()


_register_auto_classes()
_register_pipeline()
_register_varlen_attention()

__all__ = [
    "AstromerConfig",
    "AstromerModel",
    "AstromerPreTrainedModel",
    "AstromerForMaskedReconstruction",
    "AstromerForSequenceClassification",
    "AstromerFeatureExtractor",
    "AstromerMaskingCollator",
    "compute_loss_weights",
    "LightCurveFeatureExtractionPipeline",
    "load_pipeline",
]
