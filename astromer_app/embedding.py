"""Embedding light-curve records with the pipeline and writing one Parquet row per light curve."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from astromer_kernels.cpu_linear import use_onednn_linears
from hub_datasets.atomic import atomic_file
from modeling_astromer import LightCurveValidationError, load_pipeline, resolve_model
from modeling_astromer.errors import InputError

from .light_curve_files import LightCurveRecord, invalid_record_error, read_table

__all__ = [
    "EMBEDDING_PREFIX",
    "bf16_autocast",
    "check_output",
    "embed_records_to_parquet",
    "load_embedding_pipeline",
    "quiet_transformers",
    "read_embeddings",
]

EMBEDDING_PREFIX = "emb_"


def quiet_transformers() -> None:
    """Keep the command output readable: no weight-loading progress bars or load reports."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_embedding_pipeline(model: str, batch_size: int) -> Any:
    """The feature-extraction pipeline of a bundled model name, folder or Hub repo id."""
    resolved = resolve_model(model)
    try:
        return load_pipeline(resolved, batch_size=batch_size)
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


def embed_records_to_parquet(
    records: Sequence[LightCurveRecord],
    pipe: Any,
    output: str | os.PathLike,
    pooling: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
    chunk_size: int = 256,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Embed every record with `pipe` and write one Parquet row per light curve, atomically.

    Columns: ``id``, ``source``, ``n_observations`` (kept after cleaning), ``n_windows``, ``label`` (when the
    records carry labels), then ``emb_000`` ... ``emb_{D-1}`` float32. The file's key-value metadata ``astromer``
    holds the pooling, the hidden size and `metadata`.

    Raises:
        InputError: for an invalid light curve (naming its file and id) or an output that exists without
            ``overwrite``. The output is never left half-written.
    """
    target = Path(output)
    check_output(target, overwrite, (".parquet",))
    if not records:
        raise InputError("no light curves to embed")
    with_labels = any(r.label is not None for r in records)
    writer = None
    with atomic_file(target) as temporary, contextlib.ExitStack() as cleanup:
        with tqdm(
            total=len(records), unit="curve", desc="embedding", disable=not progress, file=sys.stderr
        ) as bar:
            for start in range(0, len(records), chunk_size):
                chunk = records[start : start + chunk_size]
                try:
                    results = pipe(
                        [r.table for r in chunk],
                        ids=[r.curve_id for r in chunk],
                        pooling=pooling,
                        return_details=True,
                    )
                except LightCurveValidationError as exc:
                    raise invalid_record_error(chunk, exc) from exc
                embeddings = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in results])
                columns: dict[str, Any] = {
                    "id": pa.array([r.curve_id for r in chunk], pa.string()),
                    "source": pa.array([r.source for r in chunk], pa.string()),
                    "n_observations": pa.array([r["n_observations"] for r in results], pa.int64()),
                    "n_windows": pa.array([r["n_windows"] for r in results], pa.int64()),
                }
                if with_labels:
                    columns["label"] = pa.array(
                        ["" if r.label is None else str(r.label) for r in chunk], pa.string()
                    )
                width = len(str(embeddings.shape[1] - 1))
                for k in range(embeddings.shape[1]):
                    columns[f"{EMBEDDING_PREFIX}{k:0{max(3, width)}d}"] = pa.array(
                        embeddings[:, k], pa.float32()
                    )
                table = pa.table(columns)
                if writer is None:
                    info = {"pooling": pooling, "hidden_size": int(embeddings.shape[1]), **(metadata or {})}
                    schema = table.schema.with_metadata({"astromer": json.dumps(info)})
                    writer = cleanup.enter_context(pq.ParquetWriter(temporary, schema))
                writer.write_table(table.cast(writer.schema))
                bar.update(len(chunk))
        cleanup.close()
        if target.exists() and not overwrite:  # appeared while we were working
            raise InputError(f"{target} exists; pass --overwrite to replace it")
    return target


def read_embeddings(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """Read an ``astromer embed`` Parquet file: ``(DataFrame of the non-embedding columns, (N, D) float32)``."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    frame = read_table(source) if source.suffix.lower() in (".parquet", ".pq") else None
    if frame is None:
        raise InputError(f"{source}: expected a Parquet file written by 'astromer embed'")
    embedding_columns = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    if not embedding_columns:
        raise InputError(
            f"{source}: no {EMBEDDING_PREFIX}* columns; expected a file written by 'astromer embed'"
        )
    meta = frame.drop(columns=embedding_columns)
    return pd.DataFrame(meta), frame[embedding_columns].to_numpy(dtype=np.float32)
