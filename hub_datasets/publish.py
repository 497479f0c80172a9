"""Publish a light-curve survey and its few-shot folds as a code-free Hub dataset (Parquet + dataset card).

The output folder::

    README.md                          dataset card; YAML ``configs:`` (one per config) and ``dataset_info:``
    data/<config>/<split>-NNNNN-of-NNNNN.parquet

Configs: ``full`` (the whole survey, split ``train``) and ``fold<k>_spc<n>`` (train / validation / test of
:func:`hub_datasets.folds.make_fewshot_splits`). The folder loads locally with
``datasets.load_dataset(folder, "fold0_spc20")``, and from the Hub with ``load_dataset(repo_id, "fold0_spc20")``;
``ClassLabel`` names come back from ``dataset_info`` (and from the Parquet schema metadata).

CLI::

    python -m hub_datasets.publish --synthetic macho --n-curves 5000 --out pub/ --repo-id me/astromer-synthetic --dry-run
    python -m hub_datasets.publish --from-disk alcock_ds/ --survey alcock --out pub/ --repo-id astromer/alcock

Without ``--dry-run`` it runs ``HfApi.create_repo(exist_ok=True)`` then one ``HfApi.upload_folder`` commit
(authentication as usual for ``huggingface_hub``: ``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from hub_datasets.folds import config_name, make_fewshot_splits

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


def _card_text(survey: str, configs: Sequence[str], protocol: str) -> str:
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
ds = load_dataset("<repo_id>", "{first_fold}")
```

Converted with `python -m hub_datasets.publish` (package `astromer-hf`).
"""


def build_folder(
    datasets_by_config: Mapping[str, datasets.DatasetDict],
    out: str | Path,
    survey: str,
    protocol: str = "",
    max_rows_per_shard: int = 20_000,
    overwrite: bool = False,
) -> Path:
    """Write Parquet shards and the dataset card for every config into ``out`` (atomically; refuses a non-empty
    ``out`` unless ``overwrite``). Returns ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        metadata_configs = MetadataConfigs()
        infos = DatasetInfosDict()
        for name, dd in datasets_by_config.items():
            data_files = []
            split_infos = datasets.SplitDict()
            for split, ds in dd.items():
                _write_parquet_shards(ds, tmp / "data" / name, split, max_rows_per_shard)
                data_files.append({"split": split, "path": f"data/{name}/{split}-*.parquet"})
                split_infos.add(datasets.SplitInfo(name=split, num_examples=len(ds)))
            metadata_configs[name] = {"data_files": data_files}
            first = next(iter(dd.values()))
            infos[name] = DatasetInfo(features=first.features, config_name=name, splits=split_infos)
        card_data = DatasetCardData(
            license="other",
            pretty_name=f"{survey} light curves",
            tags=["astronomy", "light-curves", "time-series"],
        )
        metadata_configs.to_dataset_card_data(card_data)
        infos.to_dataset_card_data(card_data)
        card = DatasetCard.from_template(
            card_data,
            template_str="---\n{{ card_data }}\n---\n"
            + _card_text(survey, list(datasets_by_config), protocol),
        )
        card.save(str(tmp / "README.md"))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _load_source(args: argparse.Namespace) -> tuple[datasets.Dataset, str]:
    from hub_datasets.folds import load_input

    name = f"synthetic-{args.synthetic}" if args.synthetic else args.survey or Path(args.from_disk).name
    return load_input(args), name


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m hub_datasets.publish``."""
    parser = argparse.ArgumentParser(
        prog="python -m hub_datasets.publish",
        description="Write a survey and its few-shot folds as Parquet + dataset card, then push it to the Hub.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-disk", metavar="PATH", help="a save_to_disk folder (e.g. a builder's as_dataset output)"
    )
    source.add_argument("--synthetic", choices=["macho", "atlas"], help="publish a synthetic survey")
    parser.add_argument("--survey", help="survey name for the card (default: folder name)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--n-curves", type=int, default=5000)
    parser.add_argument("--out", required=True, help="local output folder")
    parser.add_argument(
        "--repo-id", help="Hub dataset repo, e.g. astromer/alcock (required unless --dry-run)"
    )
    parser.add_argument(
        "--folds", type=int, default=3, help="number of folds (0: publish only the 'full' config)"
    )
    parser.add_argument("--spc", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rows-per-shard", type=int, default=20_000)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only; do not push")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dry_run and not args.repo_id:
        parser.error("--repo-id is required unless --dry-run")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        parser.error(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    try:
        dataset, survey = _load_source(args)
        configs: dict[str, datasets.DatasetDict] = {"full": datasets.DatasetDict({"train": dataset})}
        protocol = ""
        if args.folds > 0:
            splits = make_fewshot_splits(
                dataset,
                n_folds=args.folds,
                test_per_class=args.test_per_class,
                samples_per_class=args.spc,
                seed=args.seed,
            )
            configs.update({config_name(f, s): dd for (f, s), dd in sorted(splits.items())})
            protocol = (
                f"Few-shot configs: {args.folds} folds × samples per class {args.spc}; test = {args.test_per_class} "
                f"curves per class per fold; validation = 20 % of spc per class; seed {args.seed} "
                "(`hub_datasets.folds.make_fewshot_splits`)."
            )
        build_folder(configs, out, survey, protocol, args.max_rows_per_shard, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, KeyError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(configs)} configs to {out}")
    if args.dry_run:
        print("dry run: not pushed")
        return 0
    url = push_folder(out, args.repo_id, private=args.private)
    print(f"pushed to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
