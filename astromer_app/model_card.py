"""The Hub model card (``README.md``) of an Astromer release: metadata, usage, numerical notes and evaluation.

:func:`build_model_card` returns a :class:`huggingface_hub.ModelCard` whose YAML header comes from
:class:`huggingface_hub.ModelCardData` (``library_name: transformers``, the weights' ``license``, tags,
``pipeline_tag: feature-extraction``, ``base_model`` and ``datasets`` when known) and whose body is written from the model's own config, so the card always
describes the weights it ships with. :func:`evaluation_table` renders an evaluation given as JSON or Markdown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["MODEL_CARD_TAGS", "build_model_card", "evaluation_table", "is_astromer1", "markdown_table"]

MODEL_CARD_TAGS: tuple[str, ...] = (
    "astronomy",
    "light-curves",
    "time-series",
    "astromer",
    "self-supervised",
    "transformer",
    "custom_code",
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table; columns are the union of the row keys in first-seen order."""
    if not rows:
        raise ValueError("the evaluation table has no rows")
    columns: list[str] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"every evaluation row must be a JSON object, got {type(row).__name__}")
        columns.extend(k for k in row if k not in columns)
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _rows_from_json(payload: Any) -> list[Mapping[str, Any]]:
    """Accept a list of row objects, ``{"results": [...]}``/``{"rows": [...]}``, or ``{name: {metric: value}}``."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, Mapping):
        for key in ("results", "rows", "table"):
            if isinstance(payload.get(key), list):
                return payload[key]
        if payload and all(isinstance(v, Mapping) for v in payload.values()):
            return [{"setting": name, **values} for name, values in payload.items()]
        if payload and all(not isinstance(v, (Mapping, list)) for v in payload.values()):
            return [dict(payload)]
    raise ValueError(
        "unsupported evaluation JSON: expected a list of row objects, {'results': [...]}, or {setting: {metric: value}}"
    )


def evaluation_table(source: str | os.PathLike | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """Markdown for the card's evaluation section.

    Args:
        source: a ``.md`` file (used verbatim), a ``.json`` file, or already-parsed JSON (see
            :func:`markdown_table` and the accepted shapes in ``_rows_from_json``).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: evaluation file not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".md", ".markdown"):
            if not text.strip():
                raise ValueError(f"{path}: the evaluation Markdown is empty")
            return text.strip()
        if path.suffix.lower() != ".json":
            raise ValueError(f"{path}: the evaluation must be a .json or .md file")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        try:
            return markdown_table(_rows_from_json(payload))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return markdown_table(_rows_from_json(source))


def is_astromer1(config: Any) -> bool:
    """Astromer 1 weights: the query-key attention term that depends on the padded layout."""
    return config.attention_bias_mode == "a1_query_key_bias"


def _architecture(config: Any) -> str:
    variant = "Astromer 1" if is_astromer1(config) else "Astromer 2"
    return (
        f"{variant}-style encoder: {config.num_hidden_layers} blocks, {config.num_attention_heads} heads, hidden size "
        f"{config.hidden_size}, feed-forward width {config.intermediate_size} ({config.hidden_act}), "
        f"{'projected' if config.use_residual_projection else 'no'} residuals, windows of {config.window_size} "
        f"observations, MASK token {'applied' if config.use_mask_token else 'not applied'}."
    )


#: Provenance fields of ``config.conversion_source`` shown on the card, with their labels.
_PROVENANCE_LABELS: dict[str, str] = {
    "repository": "Source repository",
    "commit": "Commit",
    "archive": "Archive",
    "archive_sha256": "Archive SHA-256",
    "training_data": "Training data",
    "license": "Licence",
    "citation": "Cite",
}


def _provenance(source: Mapping[str, Any]) -> str:
    lines = [
        f"Converted from the official TensorFlow checkpoint `{source.get('folder', '?')}` "
        f"({source.get('variant', '?')}) with `astromer convert`, without TensorFlow; the conversion checks every "
        "variable's name, shape and CRC."
    ]
    rows = [f"- {label}: {source[key]}" for key, label in _PROVENANCE_LABELS.items() if source.get(key)]
    files = source.get("files")
    if isinstance(files, Mapping) and files:
        rows.append("- Checkpoint files (SHA-256): " + ", ".join(f"`{name}` {digest}" for name, digest in files.items()))
    if rows:
        lines += ["", *rows]
    return "\n".join(lines)


def _numerical_notes(config: Any) -> list[str]:
    centring = (
        "**The official pipeline centres inputs in float32.** TensorFlow casts the times to float32 before "
        "subtracting the window mean, which moves centred times by up to 0.078 d. This feature extractor centres "
        "each window in float64 and then casts to float32, which is more accurate; embeddings therefore differ "
        "slightly from those of the TensorFlow pipeline on the same light curves."
    )
    windows = (
        "Sequential windows follow the official pivots: a light curve of `L` observations gives "
        f"`L // {config.window_size} + 1` windows, the last one overlapping the previous one."
    )
    if is_astromer1(config):
        first = (
            "**Astromer 1 always runs on windows padded to "
            f"{config.window_size} observations.** Its attention adds `+1 * min(1, m_q + m_k)` to the scores instead "
            "of masking, so padded positions take part in attention and the outputs depend on the padded layout: "
            "feed windows padded exactly as the feature extractor pads them (the pipeline does), never packed or "
            "shorter windows."
        )
    else:
        first = (
            "**The released Astromer 2 applies no MASK token.** The official code defines a trainable token, but "
            "Keras silently drops the layer that applies it, so the released weights were pretrained with each "
            "masked magnitude still visible to its own position (hidden from the other positions only as an "
            "attention key). The faithful preset `AstromerConfig.astromer2()` therefore has `use_mask_token=False`; "
            "new pretraining runs should set `use_mask_token=True` (the paper's intended behaviour)."
        )
    return [f"1. {first}", f"2. {centring}", f"3. {windows}"]


def build_model_card(
    config: Any,
    repo_id: str,
    evaluation: str | None = None,
    datasets: Sequence[str] | None = None,
    description: str | None = None,
    training_summary: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The model card of one release.

    Args:
        config: the model's ``AstromerConfig``.
        repo_id: the Hub repository (used in the usage snippets).
        evaluation: Markdown for the evaluation section (see :func:`evaluation_table`); omitted when None.
        datasets: Hub dataset ids for the metadata.
        description: a first paragraph (defaults to a generic Astromer description).
        training_summary: how these weights were obtained; defaults to the provenance the converter recorded in
            ``config.conversion_source`` (source repository, commit, checksums, training data, licence).
        license: the weights' licence identifier; defaults to the one in ``config.conversion_source``.
        base_model: the Hub id of the model these weights were trained from, when there is one.

    Raises:
        ValueError: when the licence is neither given nor recorded in the config.
    """
    source = getattr(config, "conversion_source", None)
    source = source if isinstance(source, Mapping) else {}
    license = license or source.get("license")
    if not license:
        raise ValueError(
            "the weights' licence is unknown: give one (e.g. --license mit); converted checkpoints record it when "
            "`astromer convert --license` was used"
        )
    data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=list(MODEL_CARD_TAGS),
        pipeline_tag="feature-extraction",
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
    )
    if training_summary is None and source:
        training_summary = _provenance(source)
    description = description or (
        "Astromer is a self-supervised, BERT-style transformer for astronomical light curves (irregularly sampled "
        "time, magnitude and uncertainty). It turns each light curve into an embedding for classification, "
        "retrieval and anomaly detection ([Astromer 2, arXiv:2502.02717](https://arxiv.org/abs/2502.02717))."
    )
    sections = [
        f"# {repo_id.split('/')[-1]}",
        description,
        "## Model",
        _architecture(config),
    ]
    if training_summary:
        sections += ["## Provenance", training_summary]
    sections += [
        "## Usage",
        "One embedding per light curve; light curves of any length are cut into windows inside the pipeline. Each "
        "light curve is an `(L, 3)` array of time [d], magnitude and error, or a dict / `pandas.DataFrame` / "
        "astropy `Table` with those columns (names such as `mjd`, `mag`, `errmag` are detected).",
        "Without installing anything but `transformers` (the model code ships with the weights):",
        "```python\n"
        "from transformers import pipeline\n\n"
        f'extractor = pipeline("feature-extraction", model="{repo_id}", trust_remote_code=True)\n'
        'embeddings = extractor(light_curves, pooling="skip", batch_size=64)  # one vector per curve\n'
        "```",
        "With the `astromer-hf` package (no remote code):",
        "```python\n"
        "import modeling_astromer\n"
        "from transformers import AutoModel, pipeline\n\n"
        f'extractor = pipeline("light-curve-feature-extraction", model="{repo_id}")\n'
        f'model = AutoModel.from_pretrained("{repo_id}")\n'
        "```",
        f"From the command line: `astromer embed light_curves/ --model {repo_id} -o embeddings.parquet`.",
        "Pooling: `skip` (default; the paper's weighted mean over "
        + ("every block" if is_astromer1(config) else "the input embedding and every block")
        + "), `mean` or `max` over the last block; the window vectors of a light curve are then averaged.",
        "## Numerical notes",
        *_numerical_notes(config),
    ]
    if evaluation:
        sections += ["## Evaluation", evaluation]
    citation = (
        "@article{astromer1,\n"
        "  title   = {ASTROMER: A transformer-based embedding for the representation of light curves},\n"
        "  author  = {Donoso-Oliva, C. and Becker, I. and Protopapas, P. and Cabrera-Vives, G. and others},\n"
        "  journal = {Astronomy \\& Astrophysics},\n"
        "  volume  = {670},\n"
        "  pages   = {A54},\n"
        "  year    = {2023}\n"
        "}"
        if is_astromer1(config)
        else "@article{astromer2,\n"
        "  title   = {Astromer 2},\n"
        "  author  = {Donoso-Oliva, Cristobal and others},\n"
        "  journal = {arXiv preprint arXiv:2502.02717},\n"
        "  year    = {2025}\n"
        "}"
    )
    sections += ["## Citation", f"```bibtex\n{citation}\n```"]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)
