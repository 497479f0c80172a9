"""Astromer 2 for the Hugging Face ecosystem: the model set users load.

Importing this package registers the Astromer config, models and feature extractor with the `transformers` Auto
classes (so `AutoModel.from_pretrained("astromer/astromer-2")` works without `trust_remote_code`), the pipeline task
``"light-curve-feature-extraction"``, and this project's attention implementations (``"astromer_varlen"``,
``"astromer_blocked"``; see :mod:`astromer_kernels.registry`).
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from astromer_kernels.registry import register_attention_implementations

from .bundled import bundled_model_path, bundled_models, resolve_model
from .configuration_astromer import POOLING_MODES, AstromerConfig
from .errors import AstromerError, InputError, LightCurveValidationError
from .feature_extraction_astromer import AstromerFeatureExtractor
from .masking import AstromerMaskingCollator
from .modeling_astromer import (
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
    AstromerModel,
    AstromerPreTrainedModel,
    compute_loss_weights,
)
from .pipeline import (
    PIPELINE_TASK,
    LightCurveFeatureExtractionPipeline,
    load_pipeline,
    register_pipeline_task,
)

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    AutoConfig.register("astromer", AstromerConfig, exist_ok=True)
    AutoModel.register(AstromerConfig, AstromerModel, exist_ok=True)
    AutoModelForPreTraining.register(AstromerConfig, AstromerForMaskedReconstruction, exist_ok=True)
    AutoModelForSequenceClassification.register(AstromerConfig, AstromerForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(AstromerConfig, AstromerFeatureExtractor, exist_ok=True)


_register_auto_classes()
register_pipeline_task()
register_attention_implementations()

__all__ = [
    "PIPELINE_TASK",
    "POOLING_MODES",
    "AstromerConfig",
    "AstromerError",
    "AstromerFeatureExtractor",
    "AstromerForMaskedReconstruction",
    "AstromerForSequenceClassification",
    "AstromerMaskingCollator",
    "AstromerModel",
    "AstromerPreTrainedModel",
    "InputError",
    "LightCurveFeatureExtractionPipeline",
    "LightCurveValidationError",
    "bundled_model_path",
    "bundled_models",
    "compute_loss_weights",
    "load_pipeline",
    "resolve_model",
]
