"""Publish a light-curve survey and its few-shot folds as a code-free Hub dataset (Parquet + dataset card).

The output folder::

    README.md                          dataset card; YAML ``configs:`` (one per config) and ``dataset_info:``
    data/<config>/<split>-NNNNN-of-NNNNN.parquet

Configs: ``full`` (the whole survey, split ``train``) and ``fold<k>_spc<n>`` (train / validation / test of
:func:`hub_datasets.folds.make_fewshot_splits`). The folder loads locally with
``datasets.load_dataset(folder, "fold0_spc20")``, and from the Hub with ``load_dataset(repo_id, "fold0_spc20")``;
``ClassLabel`` names come back from ``dataset_info`` (and from the Parquet schema metadata).

Command line: ``astromer publish-dataset`` (:mod:`astromer_app.dataset_commands`). :func:`push_folder` runs ``HfApi.create_repo(exist_ok=True)`` then one ``HfApi.upload_folder`` commit
(authentication as usual for ``huggingface_hub``: ``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from hub_datasets.atomic import staging_folder

SURVEY_DESCRIPTIONS: dict[str, str] = {
    "macho": "MACHO LMC R-band light curves (instrumental magnitudes).",
    "alcock": "Alcock et al. labelled MACHO variables: Cep_0, Cep_1, EC, LPV, RRab, RRc.",
    "atlas": "ATLAS variables (Heinze et al. 2018): CB, DB, Mira, Other, Pulse.",
    "synthetic-macho": "Synthetic MACHO-like light curves (hub_datasets.synthetic), Alcock classes.",
    "synthetic-atlas": "Synthetic ATLAS-like light curves (hub_datasets.synthetic), ATLAS classes.",
}


def _write_parquet_shards(
    dataset: datasets.Dataset, folder: Path, split: str, max_rows_per_shard: int
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(len(dataset) / max_rows_per_shard))
    names = []
    for index in range(n_shards):
        shard = dataset.shard(num_shards=n_shards, index=index, contiguous=True)
        name = f"{split}-{index:05d}-of-{n_shards:05d}.parquet"
        shard.to_parquet(str(folder / name))
        names.append(name)
    return names


def _card_text(survey: str, configs: Sequence[str], protocol: str, location: str) -> str:
    description = SURVEY_DESCRIPTIONS.get(survey, survey)
    listing = "\n".join(f"- `{c}`" for c in configs)
    first_fold = next((c for c in configs if c != "full"), "full")
    return f"""
# {survey} light curves

{description}

One row per light curve: `id` (string), `time` (MJD, float64 list), `mag` and `err` (float32 lists), `band`,
`label` (`ClassLabel`, published class names, alphabetical codes). Times are sorted; the official cleaning
(`0 < err < 1`, at least 5 observations) has been applied by the builders of the `astromer-hf` package.

## Configurations

{listing}

{protocol}

## Usage

```python
from datasets import load_dataset
ds = load_dataset("{location}", "{first_fold}")  # "{configs[0]}" without a name
```

Converted with `astromer publish-dataset` (package `astromer-hf`).
"""


def build_folder(
    datasets_by_config: Mapping[str, datasets.DatasetDict],
    out: str | Path,
    survey: str,
    protocol: str = "",
    max_rows_per_shard: int = 20_000,
    overwrite: bool = False,
    repo_id: str | None = None,
    license: str = "other",
    license_name: str | None = None,
    license_link: str | None = None,
) -> Path:
    """Write Parquet shards and the dataset card for every config into ``out`` (atomically; refuses a non-empty
    ``out`` unless ``overwrite``). Returns ``out``.

    The first config is the default one (``load_dataset(repo)`` without a config name loads it). ``repo_id`` goes
    into the card's usage snippet (the folder's name when None). ``license`` is a Hub licence identifier; ``"other"``
    needs ``license_name`` (and, best, ``license_link`` to the survey's terms).
    """
    if license == "other" and not license_name:
        raise ValueError("license='other' needs a license_name (and best a license_link to the data's terms)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    with staging_folder(out) as tmp:
        metadata_configs = MetadataConfigs()
        infos = DatasetInfosDict()
        default_config = next(iter(datasets_by_config))
        for name, dd in datasets_by_config.items():
            data_files = []
            split_infos = datasets.SplitDict()
            for split, ds in dd.items():
                _write_parquet_shards(ds, tmp / "data" / name, split, max_rows_per_shard)
                data_files.append({"split": split, "path": f"data/{name}/{split}-*.parquet"})
                split_infos.add(datasets.SplitInfo(name=split, num_examples=len(ds)))
            metadata_configs[name] = {"data_files": data_files, "default": name == default_config}
            first = next(iter(dd.values()))
            infos[name] = DatasetInfo(features=first.features, config_name=name, splits=split_infos)
        card_data = DatasetCardData(
            license=license,
            license_name=license_name,
            license_link=license_link,
            pretty_name=f"{survey} light curves",
            tags=["astronomy", "light-curves", "time-series"],
        )
        metadata_configs.to_dataset_card_data(card_data)
        infos.to_dataset_card_data(card_data)
        card = DatasetCard.from_template(
            card_data,
            template_str="---\n{{ card_data }}\n---\n"
            + _card_text(survey, list(datasets_by_config), protocol, repo_id or out.name),
        )
        card.save(str(tmp / "README.md"))
    return out


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None
) -> str:
    """Create the dataset repo if needed and upload ``folder`` in one commit; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        allow_patterns=["README.md", "data/**/*.parquet"],
        commit_message=commit_message or "Upload light curves (hub_datasets.publish)",
    )
    return str(getattr(info, "commit_url", info))

