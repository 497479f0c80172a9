"""Embedding light curves in bulk: cleaned curves -> windows -> batches for the model -> one vector per curve.

:class:`WindowEmbedder` is the engine behind ``astromer embed``. It takes the curves the feature extractor accepted
(a :class:`~modeling_astromer.feature_extraction_astromer.CleanedBatch`), cuts them into windows and runs the model
on batches laid out for it:

- ``"packed"`` (Astromer 2 with an attention implementation that takes packed windows, e.g. ``astromer_blocked``
  on a CPU): windows sorted by length and laid back to back (``cu_seqlens``) up to a token budget of
  ``batch_size * window_size`` observations, so a window of n observations costs about n / ``window_size`` of a
  full one;
- ``"grouped"`` (Astromer 2 with ``sdpa`` or ``eager``): windows sorted by length, each batch padded only to its
  longest window;
- ``"padded"`` (Astromer 1, whose outputs depend on padding, or on request): ``batch_size`` windows, each padded to
  ``window_size``, in input order.

The window vectors of a curve are averaged in float64, as the pipeline does.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

import modeling_astromer
from astromer_kernels.cpu_linear import use_onednn_linears
from astromer_kernels.registry import packed_attention_implementations
from hub_datasets.atomic import atomic_file
from modeling_astromer import load_pipeline, resolve_model
from modeling_astromer.errors import InputError
from modeling_astromer.feature_extraction_astromer import CleanedBatch, pad_windows, padding_mask
from modeling_astromer.packing import token_budget_batches

from .light_curve_files import LightCurveRecord, read_table, record_error

__all__ = [
    "EMBEDDING_COLUMN",
    "EMBEDDING_PREFIX",
    "LAYOUTS",
    "EmbeddedCurves",
    "WindowEmbedder",
    "bf16_autocast",
    "check_output",
    "embed_records_to_parquet",
    "embedding_schema",
    "embedding_table",
    "load_embedding_pipeline",
    "quiet_transformers",
    "read_embeddings",
]

#: The output column holding each curve's vector (a fixed-size list of float32).
EMBEDDING_COLUMN = "embedding"
#: Prefix of the one-column-per-dimension layout (``emb_000``, ``emb_001``, ...).
EMBEDDING_PREFIX = "emb_"
LAYOUTS = ("packed", "grouped", "padded")


def quiet_transformers() -> None:
    """Keep the command output readable: no weight-loading progress bars or load reports."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_embedding_pipeline(
    model: str, batch_size: int, device: Any = None, attn_implementation: str | None = "auto"
) -> Any:
    """The feature-extraction pipeline of a bundled model name, folder or Hub repo id (``attn_implementation``: see
    :func:`modeling_astromer.load_pipeline`)."""
    resolved = resolve_model(model)
    try:
        return load_pipeline(resolved, attn_implementation=attn_implementation, batch_size=batch_size, device=device)
    except OSError as exc:  # missing repo / files, offline without a cached copy
        raise InputError(f"--model {model}: cannot load the model ({exc})") from exc
    except ValueError as exc:
        raise InputError(f"--model {model}: not an Astromer model folder ({exc})") from exc


def bf16_autocast(pipe: Any) -> contextlib.AbstractContextManager:
    """bf16 autocast on the pipeline's device; on a CPU the linear layers also go through oneDNN (bias and tanh fused
    into the GEMM, see ``astromer_kernels.cpu_linear``) when the PyTorch build has that operator."""
    device = pipe.model.device
    if device.type == "cpu":
        use_onednn_linears(pipe.model)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_output(output: Path, overwrite: bool, suffixes: tuple[str, ...]) -> None:
    if not output.name.lower().endswith(suffixes):
        raise InputError(f"{output}: the output file name must end in {' or '.join(suffixes)}")
    if output.is_dir():
        raise InputError(f"{output}: is a folder; give a file name")
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")


# ------------------------------------------------------------------------------------------------------ engine
@dataclass
class EmbeddedCurves:
    """Vectors of the accepted units of a :class:`CleanedBatch`, in its order.

    Attributes:
        vectors: `(n_accepted, D)` float32.
        n_windows: `(n_accepted,)` int64 windows per unit.
        finite: `(n_accepted,)` bool, False for a vector with a non-finite value (never to be written).
    """

    vectors: np.ndarray
    n_windows: np.ndarray
    finite: np.ndarray


def _window_groups(lengths: np.ndarray, layout: str, batch_size: int, window_size: int) -> list[np.ndarray]:
    """The windows (indices into ``lengths``) of each forward pass."""
    if layout == "padded":
        return [np.arange(s, min(s + batch_size, lengths.size)) for s in range(0, lengths.size, batch_size)]
    order = np.argsort(-lengths, kind="stable")
    budget = batch_size * window_size
    if layout == "packed":
        return [order[group] for group in token_budget_batches(lengths[order].tolist(), budget)]
    groups = []  # "grouped": a batch of windows no longer than its first (longest) fits budget // that length
    start = 0
    while start < order.size:
        capacity = max(1, budget // max(1, int(lengths[order[start]])))
        groups.append(order[start:start + capacity])
        start += capacity
    return groups


class WindowEmbedder:
    """Embeds cleaned light curves with an Astromer model (see the module docstring for the batch layouts).

    Args:
        model: an ``AstromerModel`` or a model holding one as ``.astromer`` (a classifier's fine-tuned layer weights
            are used for ``pooling="skip"``).
        extractor: the model's ``AstromerFeatureExtractor``.
        pooling: ``"skip"``, ``"mean"`` or ``"max"``.
        batch_size: windows per forward pass (packed: ``batch_size * window_size`` observations).
        padded: pad every window to ``window_size`` even when the model could run it shorter.
    """

    def __init__(self, model: Any, extractor: Any, pooling: str = "skip", batch_size: int = 64, padded: bool = False):
        self.encoder = getattr(model, "astromer", model)
        self.layer_logits = getattr(model, "layer_logits", None) if pooling == "skip" else None
        self.extractor = extractor
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self.window_size = int(extractor.window_size)
        config = self.encoder.config
        if padded or config.attention_bias_mode == "a1_query_key_bias":
            self.layout = "padded"
        elif config._attn_implementation in packed_attention_implementations():
            self.layout = "packed"
        else:
            self.layout = "grouped"

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def embed_windows(self, magnitudes: np.ndarray, times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """`(n_windows, D)` float32 window vectors of centred windows laid back to back (``magnitudes``, ``times``
        `(lengths.sum(),)` float32; ``lengths`` `(n_windows,)`)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        out: np.ndarray | None = None
        with torch.inference_mode():
            for group in _window_groups(lengths, self.layout, self.batch_size, self.window_size):
                group_lengths = lengths[group]
                offset = np.concatenate([[0], np.cumsum(group_lengths)[:-1]])
                rows = np.repeat(first[group] - offset, group_lengths) + np.arange(int(group_lengths.sum()))
                vectors = self._forward(magnitudes[rows], times[rows], group_lengths)
                if out is None:
                    out = np.empty((lengths.size, vectors.shape[1]), dtype=np.float32)
                out[group] = vectors
        if out is None:
            return np.zeros((0, self.encoder.config.hidden_size), dtype=np.float32)
        return out

    def _forward(self, magnitudes: np.ndarray, times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        device = self.device
        packed: dict[str, Any] = {}
        if self.layout == "packed":
            m = torch.from_numpy(magnitudes)[None]
            t = torch.from_numpy(times)[None]
            mask = torch.ones_like(m, dtype=torch.long)
            cu_seqlens = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            packed = {"cu_seqlens": cu_seqlens.to(device), "max_seqlen": int(lengths.max())}
        else:
            width = self.window_size if self.layout == "padded" else int(lengths.max())
            side = self.extractor.padding_side if self.layout == "padded" else "right"
            m = torch.from_numpy(pad_windows(magnitudes, lengths, width, side))
            t = torch.from_numpy(pad_windows(times, lengths, width, side))
            mask = torch.from_numpy(padding_mask(lengths, width, side).astype(np.int64))
        vectors = self.encoder.embed(
            m.to(device), t.to(device), mask.to(device), pooling=self.pooling, layer_logits=self.layer_logits,
            **packed,
        )
        return vectors.float().cpu().numpy()

    def embed(self, batch: CleanedBatch) -> EmbeddedCurves:
        """Window, centre and embed the accepted units of ``batch``; average each unit's windows (float64)."""
        features = self.extractor.window_features(batch, sampling="sequential", padding=False)
        lengths = features["window_length"]
        windows = self.embed_windows(features["magnitudes"], features["times"], lengths)
        n_units = len(batch.cleaned)
        unit = np.searchsorted(batch.unit_index, features["light_curve_index"])
        n_windows = np.bincount(unit, minlength=n_units).astype(np.int64)
        if n_units == 0:
            return EmbeddedCurves(windows[:0], n_windows, np.zeros(0, dtype=bool))
        starts = np.concatenate([[0], np.cumsum(n_windows)[:-1]])  # windows come unit after unit
        vectors = (np.add.reduceat(windows.astype(np.float64), starts, axis=0) / n_windows[:, None]).astype(np.float32)
        return EmbeddedCurves(vectors, n_windows, np.isfinite(vectors).all(axis=1))


# ------------------------------------------------------------------------------------------------------ tables
def embedding_schema(
    hidden_size: int,
    with_band: bool = False,
    with_label: bool = False,
    layout: str = "vector",
    metadata: dict[str, Any] | None = None,
) -> pa.Schema:
    """The output table: ``id``, ``band`` (with bands), ``source``, ``n_observations``, ``n_windows``, ``label``
    (with labels), then ``embedding`` (``layout="vector"``: a fixed-size list of ``hidden_size`` float32) or the
    float32 columns ``emb_000`` ... (``layout="columns"``). ``metadata`` goes to the key ``astromer`` as JSON."""
    fields = [pa.field("id", pa.string())]
    if with_band:
        fields.append(pa.field("band", pa.string()))
    fields += [pa.field("source", pa.string()), pa.field("n_observations", pa.int64()),
               pa.field("n_windows", pa.int64())]
    if with_label:
        fields.append(pa.field("label", pa.string()))
    if layout == "vector":
        fields.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), hidden_size)))
    elif layout == "columns":
        width = max(3, len(str(hidden_size - 1)))
        fields += [pa.field(f"{EMBEDDING_PREFIX}{k:0{width}d}", pa.float32()) for k in range(hidden_size)]
    else:
        raise ValueError(f"layout must be 'vector' or 'columns', got {layout!r}")
    schema = pa.schema(fields)
    if metadata:
        schema = schema.with_metadata({"astromer": json.dumps(metadata, sort_keys=True)})
    return schema


def embedding_table(schema: pa.Schema, rows: dict[str, Sequence[Any]], vectors: np.ndarray) -> pa.Table:
    """``rows`` (``id``, ``source``, ``n_observations``, ``n_windows`` and, when the schema has them, ``band`` and
    ``label``) and `(n, D)` float32 ``vectors`` as a table of ``schema``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    columns: list[pa.Array] = []
    for field in schema:
        if field.name == EMBEDDING_COLUMN:
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]))
        elif field.name.startswith(EMBEDDING_PREFIX):
            columns.append(pa.array(vectors[:, int(field.name[len(EMBEDDING_PREFIX):])]))
        else:
            columns.append(pa.array(list(rows[field.name]), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_embeddings(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """Read what ``astromer embed`` wrote (a Parquet file, or a folder of Parquet shards): ``(DataFrame of the
    other columns, (N, D) float32)``, from an ``embedding`` column or ``emb_*`` columns."""
    source = Path(path)
    if source.is_dir():
        files = sorted(p for p in source.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise InputError(f"{source}: no Parquet files in the folder")
        frame = pd.concat([read_table(p) for p in files], ignore_index=True)
    elif source.is_file() and source.suffix.lower() in (".parquet", ".pq"):
        frame = read_table(source)
    elif source.is_file():
        raise InputError(f"{source}: expected a Parquet file written by 'astromer embed'")
    else:
        raise InputError(f"{source}: no such file")
    if EMBEDDING_COLUMN in frame.columns:
        values = frame[EMBEDDING_COLUMN].to_list()
        vectors = np.stack(values).astype(np.float32) if values else np.zeros((0, 0), dtype=np.float32)
        return pd.DataFrame(frame.drop(columns=[EMBEDDING_COLUMN])), vectors
    embedding_columns = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    if not embedding_columns:
        raise InputError(
            f"{source}: no {EMBEDDING_COLUMN!r} or {EMBEDDING_PREFIX}* columns; expected a file written by "
            "'astromer embed'"
        )
    return pd.DataFrame(frame.drop(columns=embedding_columns)), frame[embedding_columns].to_numpy(dtype=np.float32)


def embed_records_to_parquet(
    records: Sequence[LightCurveRecord],
    pipe: Any,
    output: str | os.PathLike,
    pooling: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
    chunk_size: int = 256,
    metadata: dict[str, Any] | None = None,
    layout: str = "columns",
) -> Path:
    """Embed in-memory records with ``pipe``'s model and write one Parquet row per light curve, atomically.

    Columns: see :func:`embedding_schema` (``layout="columns"``: ``emb_000`` ...; ``"vector"``: one ``embedding``
    column). The key-value metadata ``astromer`` holds the pooling, the hidden size and ``metadata``.

    Raises:
        InputError: for an invalid light curve (naming its file and id) or an output that exists without
            ``overwrite``. The output is never left half-written.
    """
    target = Path(output)
    check_output(target, overwrite, (".parquet",))
    if not records:
        raise InputError("no light curves to embed")
    embedder = WindowEmbedder(pipe.model, pipe.feature_extractor, pooling=pooling, batch_size=pipe._batch_size or 64)
    hidden_size = int(embedder.encoder.config.hidden_size)
    with_labels = any(r.label is not None for r in records)
    info = {"pooling": pooling, "hidden_size": hidden_size, "package_version": modeling_astromer.__version__,
            **(metadata or {})}
    schema = embedding_schema(hidden_size, with_label=with_labels, layout=layout, metadata=info)
    with atomic_file(target) as temporary, pq.ParquetWriter(temporary, schema) as writer, tqdm(
        total=len(records), unit="curve", desc="embedding", disable=not progress, file=sys.stderr
    ) as bar:
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            batch = pipe.feature_extractor.clean_batch(
                [r.table for r in chunk], ids=[r.curve_id for r in chunk], on_error="collect"
            )
            if batch.rejected:
                rejected = batch.rejected[0]
                raise record_error(chunk[rejected.curve_index], rejected.error)
            embedded = embedder.embed(batch)
            if not embedded.finite.all():
                bad = chunk[int(np.flatnonzero(~embedded.finite)[0])]
                raise InputError(f"{bad.source}: light curve {bad.curve_id!r}: its embedding is not finite")
            rows = {
                "id": [r.curve_id for r in chunk],
                "source": [r.source for r in chunk],
                "n_observations": batch.cleaned.lengths,
                "n_windows": embedded.n_windows,
                "label": ["" if r.label is None else str(r.label) for r in chunk],
            }
            writer.write_table(embedding_table(schema, rows, embedded.vectors))
            bar.update(len(chunk))
    return target
