"""Astromer survey light curves as Hugging Face datasets: builders for the authors' raw layouts (MACHO, Alcock,
ATLAS), the few-shot fold protocol, publishing to the Hub, real and synthetic sample data, and a bridge to the
model's feature extractor. See the module docstrings of :mod:`hub_datasets.builders`, :mod:`hub_datasets.folds`,
:mod:`hub_datasets.publish`, :mod:`hub_datasets.samples`, :mod:`hub_datasets.synthetic` and :mod:`hub_datasets.bridge`.
"""

from hub_datasets.folds import make_fewshot_splits

__all__ = ["make_fewshot_splits"]
