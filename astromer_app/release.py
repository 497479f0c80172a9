"""Release Astromer weights to the Hugging Face Hub as a complete, self-contained repository.

``astromer push-to-hub SOURCE --repo-id OWNER/NAME [--dry-run --output DIR] ...``.

SOURCE is a model folder (``save_pretrained`` output, a training run's model folder or an ``astromer convert``
result) or an official TensorFlow checkpoint (folder or prefix with ``.index``), which is converted first.
The release folder holds everything both loading routes need (the package's registered classes, or remote code
with ``trust_remote_code=True``):

- ``model.safetensors`` and ``config.json`` with the full ``auto_map`` (config, base model, both heads) and
  ``custom_pipelines`` (``pipeline("feature-extraction", model=REPO, trust_remote_code=True)``);
- the remote code ``configuration_astromer.py``, ``modeling_astromer.py``, ``feature_extraction_astromer.py`` and
  ``pipeline_astromer.py`` (they import only each other, torch, numpy and transformers);
- ``preprocessor_config.json`` with its ``auto_map``;
- ``README.md``: the model card (metadata, usage, numerical notes, the evaluation table when given).

Without ``--dry-run`` the folder is uploaded in one commit with ``HfApi().upload_folder`` (after
``create_repo(exist_ok=True)``). With ``--dry-run`` it is only written to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

import modeling_astromer
from hub_datasets.atomic import publish_folder
from modeling_astromer.errors import AstromerError

from .convert import convert_tf_checkpoint
from .hub_layout import PACKAGE_DIR, write_hub_folder
from .model_card import build_model_card, evaluation_table

__all__ = [
    "CUSTOM_PIPELINES",
    "RELEASE_FILE_PATTERNS",
    "ReleaseError",
    "build_parser",
    "build_release_folder",
    "load_release_model",
    "main",
    "upload_release",
]

CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    "feature-extraction": {
        "impl": "pipeline_astromer.LightCurveFeatureExtractionPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}
#: What a release commit may contain (nothing else in the folder is uploaded).
RELEASE_FILE_PATTERNS: list[str] = ["*.safetensors", "*.json", "*.py", "README.md", "LICENSE"]
_MODEL_CLASSES = ("AstromerForMaskedReconstruction", "AstromerForSequenceClassification", "AstromerModel")


class ReleaseError(AstromerError, ValueError):
    """The source cannot be released (missing, not an Astromer model, unreadable evaluation, ...)."""


def _is_tf_checkpoint(source: Path) -> bool:
    if source.is_dir():
        return any(source.glob("*.index")) and not (source / "config.json").is_file()
    return Path(f"{source}.index").is_file()


def load_release_model(
    source: str | Path, variant: str | None = None, work_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """Load ``(model, feature_extractor)`` from a model folder or convert a TF checkpoint first.

    The model keeps the class it was saved with (``architectures`` in ``config.json``): a pretraining checkpoint
    keeps its reconstruction head, a fine-tuned classifier its head and gamma.
    """
    path = Path(source)
    if not path.exists() and not Path(f"{path}.index").is_file():
        raise ReleaseError(f"{path}: no such model folder or checkpoint")
    if _is_tf_checkpoint(path):
        if work_dir is None:
            raise ReleaseError("converting a TensorFlow checkpoint needs a work_dir")
        converted = Path(work_dir) / "converted"
        try:
            convert_tf_checkpoint(path, converted, variant=variant)
        except AstromerError as exc:
            raise ReleaseError(f"{path}: {exc}") from exc
        path = converted
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ReleaseError(f"{path}: not a model folder (no config.json) and not a TensorFlow checkpoint")
    config_json = json.loads(config_file.read_text())
    if config_json.get("model_type") != "astromer":
        raise ReleaseError(f"{path}: model_type is {config_json.get('model_type')!r}, expected 'astromer'")
    architectures = config_json.get("architectures") or ["AstromerModel"]
    name = next((a for a in architectures if a in _MODEL_CLASSES), "AstromerModel")
    model = getattr(modeling_astromer, name).from_pretrained(path).eval()
    if (path / "preprocessor_config.json").is_file():
        extractor = modeling_astromer.AstromerFeatureExtractor.from_pretrained(path)
    else:
        extractor = modeling_astromer.AstromerFeatureExtractor(window_size=model.config.window_size)
    if extractor.window_size != model.config.window_size:
        raise ReleaseError(
            f"{path}: preprocessor window_size {extractor.window_size} differs from the model's "
            f"{model.config.window_size}"
        )
    return model, extractor


def build_release_folder(
    source: str | Path,
    output: str | Path,
    repo_id: str,
    evaluation: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    variant: str | None = None,
    overwrite: bool = False,
    license: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write the complete Hub folder for `source` into `output`, atomically (nothing is left on error).

    ``license`` (default: the licence recorded at conversion) and ``base_model`` go into the card's metadata; a
    release without a known licence is refused.

    Returns:
        The output folder.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ReleaseError(f"--repo-id {repo_id!r} is not a Hub repository id (owner/name): {exc}") from exc
    if base_model is not None:
        try:
            validate_repo_id(base_model)
        except HFValidationError as exc:
            raise ReleaseError(f"--base-model {base_model!r} is not a Hub repository id: {exc}") from exc
    destination = Path(output)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())) and not overwrite:
        raise ReleaseError(f"{destination} exists and is not empty; pass --overwrite to replace it")
    evaluation_markdown = None
    if evaluation is not None:
        try:
            evaluation_markdown = evaluation_table(evaluation)
        except (OSError, ValueError) as exc:
            raise ReleaseError(str(exc)) from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".release-", dir=destination.parent) as work:
        model, extractor = load_release_model(source, variant=variant, work_dir=work)
        staged = write_hub_folder(
            model,
            Path(work) / "hub",
            feature_extractor=extractor,
            extra_code_files={"pipeline_astromer.py": PACKAGE_DIR / "pipeline_astromer.py"},
            config_updates={"custom_pipelines": CUSTOM_PIPELINES},
        )
        try:
            card = build_model_card(
                model.config,
                repo_id,
                evaluation=evaluation_markdown,
                datasets=datasets,
                license=license,
                base_model=base_model,
            )
        except ValueError as exc:
            raise ReleaseError(f"{source}: {exc}") from exc
        card.save(staged / "README.md")
        for folder in (Path(source), Path(work) / "converted"):
            if folder.is_dir() and (folder / "LICENSE").is_file():
                shutil.copyfile(folder / "LICENSE", staged / "LICENSE")
                break
        publish_folder(staged, destination)
    return destination


def upload_release(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Release Astromer weights",
) -> Any:
    """Create the repo if needed and upload `folder` in one commit; returns the ``CommitInfo``."""
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        allow_patterns=RELEASE_FILE_PATTERNS,
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astromer push-to-hub",
        description="Turn converted or trained Astromer weights into a complete Hub repository and upload it.",
    )
    parser.add_argument(
        "source", help="model folder, or TensorFlow checkpoint folder/prefix (converted first)"
    )
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. astromer/astromer-2")
    parser.add_argument("--output", help="write the release folder here (required with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only, upload nothing")
    parser.add_argument("--evaluation", help="evaluation table for the model card (.json or .md)")
    parser.add_argument(
        "--dataset", action="append", dest="datasets", help="Hub dataset id for the card metadata"
    )
    parser.add_argument(
        "--variant", choices=("astromer1", "astromer2"), help="TF checkpoint variant (default: detect)"
    )
    parser.add_argument("--license", help="licence identifier of the weights (default: the one recorded at conversion)")
    parser.add_argument("--base-model", help="Hub id of the model these weights were trained from")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing")
    parser.add_argument("--commit-message", default="Release Astromer weights", help="commit message")
    parser.add_argument("--token", help="Hub token (default: the logged-in token / HF_TOKEN)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run and not args.output:
        print("astromer push-to-hub: error: --dry-run needs --output DIR", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="astromer-release-") as scratch:
            folder = Path(args.output) if args.output else Path(scratch) / "release"
            build_release_folder(
                args.source,
                folder,
                args.repo_id,
                evaluation=args.evaluation,
                datasets=args.datasets,
                variant=args.variant,
                overwrite=args.overwrite,
                license=args.license,
                base_model=args.base_model,
            )
            print(
                f"release folder: {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})",
                file=sys.stderr,
            )
            if args.dry_run:
                return 0
            commit = upload_release(
                folder,
                args.repo_id,
                token=args.token,
                private=args.private,
                revision=args.revision,
                create_pr=args.create_pr,
                commit_message=args.commit_message,
            )
            print(f"uploaded: {getattr(commit, 'commit_url', commit)}", file=sys.stderr)
    except (AstromerError, FileExistsError) as exc:
        print(f"astromer push-to-hub: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
