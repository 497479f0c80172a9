"""Astromer survey light curves as Hugging Face datasets: builders for the authors' raw layouts (MACHO, Alcock,
ATLAS), the few-shot fold protocol, publishing to the Hub, and real and synthetic sample data. See the module
docstrings of :mod:`hub_datasets.builders`, :mod:`hub_datasets.folds`, :mod:`hub_datasets.publish`,
:mod:`hub_datasets.samples` and :mod:`hub_datasets.synthetic`. Model windows come from the model's feature extractor
(``modeling_astromer.feature_extraction_astromer``).
"""

from hub_datasets.folds import make_fewshot_splits

__all__ = ["make_fewshot_splits"]
