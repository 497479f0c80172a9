"""``datasets.GeneratorBasedBuilder`` for the MACHO, Alcock and ATLAS surveys, reading every layout of
:mod:`hub_datasets.raw_layouts` from a local folder, a ``file://`` URL, or an archive URL (via ``dl_manager``).

Usage::

    from hub_datasets.builders import AlcockBuilder
    builder = AlcockBuilder(data_dir="file:///data/alcock", cache_dir="/tmp/cache")   # layout auto-detected
    builder.download_and_prepare()
    train = builder.as_dataset("train")
    print(builder.cleaning_counts["train"].summary())

Splits: the raw and parquet layouts give one ``train`` split holding the whole catalogue (make the few-shot folds
with :func:`hub_datasets.folds.make_fewshot_splits`); the parquet layout with ``fold=k`` and the tfrecord layout
with ``train``/``validation``/``val``/``test`` folders give those splits. Features: :mod:`hub_datasets.schema`.

Labels (``ClassLabel``, published names, alphabetical codes):

* Alcock: ``Cep_0, Cep_1, EC, LPV, RRab, RRc``; ``LPV WoodA``–``WoodD`` merge into ``LPV``; ``UNK``, ``std`` and
  ``Dubious`` are removed and counted in ``cleaning_counts[split].curves_removed_by_class``.
* ATLAS: ``CB, DB, Mira, Other, Pulse``; Heinze classes are merged with the *inferred* map
  :data:`hub_datasets.schema.HEINZE_TO_ATLAS`; ``Dubious`` is removed.
* MACHO (pretraining, unlabelled): ``label = -1`` unless the source has a ``Class``, which then uses the Alcock names.

Config options (all part of the cache fingerprint): ``layout`` (``auto|raw|parquet|tfrecord``), ``fold`` (parquet
``subset_<k>`` → splits), the cleaning options of :class:`hub_datasets.cleaning.CleaningOptions` (``clean``,
``err_min``, ``err_max``, ``min_observations``, ``sort_times``, ``clip_quantiles``), ``default_band``, and
``on_error``: ``"raise"`` (default) stops at the first bad file/row/label with a message naming it; ``"skip"`` skips
that whole curve, records ``(origin, reason)`` in ``cleaning_counts[split].skipped`` and logs the count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from hub_datasets.cleaning import CleaningOptions, SurveyCleaningCounts, clean_light_curve
from hub_datasets.raw_layouts import LayoutError, RawLightCurve, detect_layout, iter_layout, split_of_path
from hub_datasets.schema import (
    ALCOCK_CLASSES,
    ATLAS_CLASSES,
    UnknownLabelError,
    light_curve_features,
    normalise_alcock_class,
    normalise_atlas_class,
)
from modeling_astromer.errors import LightCurveValidationError

logger = logging.getLogger(__name__)

_SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class SurveyBuilderConfig(CleaningOptions, datasets.BuilderConfig):
    """Builder options: the cleaning options, the layout, the fold, the band of files that do not say, and what to do
    with a curve that cannot be read; ``data_dir`` is the survey folder (local path, ``file://`` URL, or archive
    URL)."""

    layout: str = "auto"
    fold: int | None = None
    default_band: str = "unknown"
    on_error: str = "raise"

    def cleaning_options(self) -> CleaningOptions:
        """The :class:`CleaningOptions` part of these settings."""
        options = {field.name: getattr(self, field.name) for field in fields(CleaningOptions)}
        if options["clip_quantiles"] is not None:
            options["clip_quantiles"] = tuple(options["clip_quantiles"])
        return CleaningOptions(**options)


class _SurveyBuilder(datasets.GeneratorBasedBuilder):
    """Shared logic; subclasses set the class names, label normaliser, default band and description."""

    BUILDER_CONFIG_CLASS = SurveyBuilderConfig
    #: Bumped whenever the produced table changes (schema, cleaning rules, label mapping).
    VERSION = datasets.Version("1.0.0")
    #: The dataset's own name: it names the cache folder, which would otherwise come from this module's name and be
    #: shared by every survey built from the same ``data_dir``.
    DATASET_NAME = ""
    CLASS_NAMES: tuple[str, ...] = ()
    DEFAULT_BAND = "unknown"
    DESCRIPTION = ""
    normalise_class: Callable[[str], str | None] = staticmethod(normalise_alcock_class)
    LABEL_REQUIRED = True

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("default_band", self.DEFAULT_BAND)
        kwargs.setdefault("dataset_name", self.DATASET_NAME)
        super().__init__(*args, **kwargs)
        if self.config.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.config.on_error!r}")
        #: Per-split :class:`SurveyCleaningCounts`, filled while ``download_and_prepare`` runs.
        self.cleaning_counts: dict[str, SurveyCleaningCounts] = {}

    def download_and_prepare(self, *args, **kwargs) -> None:
        """As ``datasets``, but a bad file/row/label surfaces as its own error (naming file and row) instead of
        being wrapped in ``DatasetGenerationError``."""
        try:
            super().download_and_prepare(*args, **kwargs)
        except DatasetGenerationError as exc:
            cause = exc.__cause__
            if isinstance(cause, (LayoutError, LightCurveValidationError, UnknownLabelError, FileNotFoundError)):
                raise cause from None
            raise

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION, features=light_curve_features(self.CLASS_NAMES)
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if not self.config.data_dir:
            raise ValueError(f"{type(self).__name__}: pass data_dir= (a folder, file:// URL or archive URL)")
        local = Path(dl_manager.download(self.config.data_dir))
        root = (
            local if local.is_dir() else Path(dl_manager.extract(str(local)))
        )  # folders as is, archives extracted
        if not root.is_dir():
            raise LayoutError(f"{self.config.data_dir}: not a folder or an archive that extracts to one")
        layout = detect_layout(root) if self.config.layout == "auto" else self.config.layout
        if layout == "tfrecord":
            splits = {split_of_path(p, root) for p in root.rglob("*.record")}
        elif layout == "parquet" and self.config.fold is not None:
            splits = set(_SPLIT_ORDER)
        else:
            splits = {"train"}
        return [
            datasets.SplitGenerator(
                name=name, gen_kwargs={"root": str(root), "layout": layout, "split": name}
            )
            for name in _SPLIT_ORDER
            if name in splits
        ]

    def _label_of(self, curve: RawLightCurve) -> tuple[int | None, bool]:
        """``(label code or -1, keep)``; raises :class:`UnknownLabelError` naming the curve's origin."""
        if curve.raw_class is None or curve.raw_class == "":
            if curve.raw_label is not None:
                if not 0 <= curve.raw_label < len(self.CLASS_NAMES):
                    raise UnknownLabelError(f"{curve.origin}: label code {curve.raw_label} out of range")
                return curve.raw_label, True
            if self.LABEL_REQUIRED:
                raise UnknownLabelError(f"{curve.origin}: no Class for this object")
            return -1, True
        try:
            name = type(self).normalise_class(curve.raw_class)
        except UnknownLabelError as exc:
            raise UnknownLabelError(f"{curve.origin}: {exc}") from None
        if name is None:
            return None, False
        return self.CLASS_NAMES.index(name), True

    def _generate_examples(self, root: str, layout: str, split: str) -> Iterator[tuple[int, dict]]:
        options = self.config.cleaning_options()
        counts = self.cleaning_counts.setdefault(split, SurveyCleaningCounts())
        key = 0
        for curve in iter_layout(root, layout=layout, fold=self.config.fold):
            if curve.split != split:
                continue
            counts.curves_read += 1
            try:
                if curve.error is not None:
                    raise LayoutError(curve.error)
                label, keep = self._label_of(curve)
                if not keep:
                    counts.curves_removed_by_class[curve.raw_class] += 1
                    continue
                if curve.raw_class is not None and curve.raw_class not in self.CLASS_NAMES:
                    counts.curves_relabelled[curve.raw_class] += 1
                cleaned = clean_light_curve(curve, options, counts)
            except (UnknownLabelError, LightCurveValidationError, LayoutError) as exc:
                if self.config.on_error == "raise":
                    raise
                counts.skipped.append((curve.origin, str(exc)))
                continue
            if cleaned is None:
                continue
            time, mag, err = cleaned
            counts.curves_kept += 1
            yield (
                key,
                {
                    "id": curve.id,
                    "time": time,
                    "mag": mag,
                    "err": err,
                    "band": curve.band or self.config.default_band,
                    "label": label,
                },
            )
            key += 1
        logger.warning("%s %s split: %s", type(self).__name__, split, counts.summary())


class AlcockBuilder(_SurveyBuilder):
    """Alcock et al. labelled MACHO R-band variables: 21,444 raw → 20,894 curves in 6 classes."""

    DATASET_NAME = "astromer_alcock"
    CLASS_NAMES = ALCOCK_CLASSES
    DEFAULT_BAND = "R"
    DESCRIPTION = "Alcock et al. MACHO variable stars (R band), classes Cep_0, Cep_1, EC, LPV, RRab, RRc."
    normalise_class = staticmethod(normalise_alcock_class)


class AtlasBuilder(_SurveyBuilder):
    """ATLAS variables (Heinze et al. 2018) in 5 merged classes; the filter (c or o) is not stated upstream."""

    DATASET_NAME = "astromer_atlas"
    CLASS_NAMES = ATLAS_CLASSES
    DEFAULT_BAND = "unknown"
    DESCRIPTION = "ATLAS variable stars (Heinze et al. 2018), merged classes CB, DB, Mira, Other, Pulse."
    normalise_class = staticmethod(normalise_atlas_class)


class MachoBuilder(_SurveyBuilder):
    """MACHO R-band pretraining light curves (unlabelled: ``label = -1`` unless the source gives a Class)."""

    DATASET_NAME = "astromer_macho"
    CLASS_NAMES = ALCOCK_CLASSES
    DEFAULT_BAND = "R"
    DESCRIPTION = "MACHO LMC R-band light curves for self-supervised pretraining (instrumental magnitudes)."
    normalise_class = staticmethod(normalise_alcock_class)
    LABEL_REQUIRED = False


BUILDERS: dict[str, type[_SurveyBuilder]] = {
    "macho": MachoBuilder,
    "alcock": AlcockBuilder,
    "atlas": AtlasBuilder,
}
