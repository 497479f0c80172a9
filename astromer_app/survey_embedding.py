"""``astromer embed`` at survey scale: streamed input, keep-going, resumable, sharded across processes.

The input is read lazily (:func:`~astromer_app.light_curve_files.iter_curve_slots`) and cut into chunks of
``chunk_size`` curves; each chunk is cleaned by the feature extractor, embedded by
:class:`~astromer_app.embedding.WindowEmbedder` and written as one Parquet shard
(:class:`~astromer_app.embedding_store.ShardedOutput`) before the next is read, so memory stays flat however many
curves there are.

Bad input: with ``on_error="fail"`` the first unreadable file or invalid curve stops the run with one message
naming it, and nothing is written; with ``on_error="skip"`` it is listed (path, curve id, band, field, reason) in
the errors file and every good curve is embedded. No embedding with a non-finite value is ever written.

Many processes: started by ``accelerate launch --num_processes N -m astromer_app embed ...`` (or ``torchrun``), the
processes take the curves in turn (curve ``k`` goes to process ``k mod N``), each writes its own shards, and the
main process publishes the folder once all are done.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env
from tqdm.auto import tqdm

import modeling_astromer
from astromer_kernels.allocator import bound_primitive_cache, release_freed_memory
from astromer_kernels.registry import packed_attention_implementations
from astromer_train.openmp import openmp_wait_policy
from modeling_astromer.bundled import DEFAULT_MODEL
from modeling_astromer.errors import InputError

from .embedding import (
    WindowEmbedder,
    bf16_autocast,
    embedding_schema,
    embedding_table,
    load_embedding_pipeline,
    quiet_transformers,
)
from .embedding_store import ShardedOutput, default_errors_path, is_file_output
from .light_curve_files import ColumnNames, CurveSlot, expand_inputs, iter_curve_slots, record_error

__all__ = ["ON_ERROR_MODES", "EmbedOptions", "EmbedSummary", "load_embedder", "run_embed"]

ON_ERROR_MODES = ("fail", "skip")


@dataclass
class EmbedOptions:
    """What ``astromer embed`` was asked to do (the command's options; see ``astromer embed --help``)."""

    inputs: list[str]
    output: Path
    model: str = DEFAULT_MODEL
    pooling: str = "skip"
    batch_size: int = 64
    precision: str = "fp32"
    bands: list[str] | None = None
    band_column: str | None = None
    columns: ColumnNames = field(default_factory=ColumnNames)
    on_error: str = "fail"
    errors: Path | None = None
    resume: bool = False
    overwrite: bool = False
    chunk_size: int = 1024
    attn_implementation: str = "auto"
    padded: bool = False
    progress: bool = True


@dataclass
class EmbedSummary:
    """What a finished run wrote (on the main process; other processes see their own counts)."""

    output: Path
    n_embedded: int
    n_skipped: int
    errors: Path | None
    is_main_process: bool = True


class _Processes:
    """This process's rank among the processes of the run, and their collective operations (no-ops alone)."""

    def __init__(self) -> None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.state: PartialState | None = None
        if world_size <= 1:
            self.rank, self.world_size = 0, 1
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            return
        # without cpu=True, a CPU-only launch would start uncoordinated single processes
        self.state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
        if self.state.num_processes != world_size:
            raise InputError(
                f"WORLD_SIZE={world_size} but Accelerate set up {self.state.num_processes} process(es); launch with "
                "'accelerate launch --num_processes N' or torchrun"
            )
        self.rank, self.world_size, self.device = self.state.process_index, world_size, self.state.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, value: Any) -> list[Any]:
        return gather_object([value]) if self.state is not None else [value]

    def from_main(self, value: Any) -> Any:
        return broadcast_object_list([value])[0] if self.state is not None else value

    def run_on_main(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on the main process; an :class:`InputError` there is raised on every process."""
        result, message = None, None
        if self.is_main:
            try:
                result = action()
            except InputError as exc:
                message = str(exc)
        message = self.from_main(message)
        if message is not None:
            raise InputError(message)
        return result


class _SkipList:
    """The curves a chunk could not embed; with ``on_error="fail"`` the first one raises instead."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.entries: list[dict[str, Any]] = []

    def add(self, ordinal: int, path: str, curve_id: Any, band: str | None, field_name: str | None, reason: str
            ) -> None:
        if self.fail:
            raise InputError(reason)
        self.entries.append({"ordinal": ordinal, "path": path, "curve_id": None if curve_id is None else str(curve_id),
                             "band": band, "field": field_name, "reason": reason})


def _check_options(options: EmbedOptions, processes: _Processes) -> None:
    if options.on_error not in ON_ERROR_MODES:
        raise InputError(f"--on-error must be one of {list(ON_ERROR_MODES)}, got {options.on_error!r}")
    if options.errors is not None and options.on_error != "skip":
        raise InputError("--errors lists the curves that --on-error skip leaves out; it needs --on-error skip")
    if options.output.suffix and not is_file_output(options.output):
        raise InputError(
            f"{options.output}: the output file name must end in .parquet (one file), or name a folder without a "
            "suffix (a folder of Parquet shards)"
        )
    if is_file_output(options.output) and processes.world_size > 1:
        raise InputError(
            f"{options.output}: with {processes.world_size} processes the output must be a folder (a name without "
            ".parquet): each process writes its own Parquet shards into it"
        )
    if options.resume and options.overwrite:
        raise InputError("--resume continues an interrupted run and --overwrite discards it; pass one of them")
    if options.chunk_size < 1:
        raise InputError(f"--chunk-size must be a positive integer, got {options.chunk_size}")
    if options.output.exists() and not options.overwrite:  # checked again before writing; this saves loading
        raise InputError(f"{options.output} exists; pass --overwrite to replace it")
    files = expand_inputs(options.inputs)
    target = options.output.resolve()
    if any(f.resolve() == target for f in files):
        raise InputError(f"{options.output}: the output file is also an input")


def load_embedder(options: EmbedOptions, device: torch.device) -> tuple[Any, WindowEmbedder]:
    """The pipeline of ``options.model`` on ``device`` and the :class:`WindowEmbedder` of the run."""
    quiet_transformers()
    pipe = load_embedding_pipeline(options.model, options.batch_size, device=device,
                                   attn_implementation=options.attn_implementation)
    encoder = getattr(pipe.model, "astromer", pipe.model)
    if (encoder.config.attention_bias_mode == "a1_query_key_bias"
            and encoder.config._attn_implementation in packed_attention_implementations()):
        raise InputError(
            f"--attn-implementation {encoder.config._attn_implementation}: Astromer 1 runs padded (its outputs depend "
            "on padding); use sdpa, eager or the automatic choice"
        )
    embedder = WindowEmbedder(pipe.model, pipe.feature_extractor, pooling=options.pooling,
                              batch_size=options.batch_size, padded=options.padded)
    return pipe, embedder


def run_embed(options: EmbedOptions) -> EmbedSummary:
    """Embed every light curve of ``options.inputs`` into ``options.output`` (see the module docstring).

    Raises:
        InputError: a bad path, option or model; with ``on_error="fail"`` the first bad file or curve; with
            ``"skip"`` a run in which no curve could be embedded. Nothing is written then (except, with
            ``"skip"``, the errors file).
    """
    bound_primitive_cache()
    processes = _Processes()
    _check_options(options, processes)
    errors_path = None
    if options.on_error == "skip":
        errors_path = options.errors or default_errors_path(options.output)
    pipe, embedder = load_embedder(options, processes.device)
    if options.progress and processes.is_main:
        choice = getattr(pipe, "attention_choice", None)
        why = f" ({choice.reason})" if choice is not None else ""
        print(f"attention: {embedder.encoder.config._attn_implementation}{why}; batch layout {embedder.layout}; "
              f"{openmp_wait_policy()}", file=sys.stderr)
    hidden_size = int(embedder.encoder.config.hidden_size)
    run = {
        "model": options.model,
        "pooling": options.pooling,
        "precision": options.precision,
        "package_version": modeling_astromer.__version__,
        "hidden_size": hidden_size,
        "bands": options.bands,
        "band_column": options.band_column,
        "columns": asdict(options.columns),
        "inputs": [str(Path(i).resolve()) for i in options.inputs],
        "chunk_size": options.chunk_size,
        "processes": processes.world_size,
        "batch_layout": embedder.layout,
    }
    schema = embedding_schema(hidden_size, with_band=options.bands is not None,
                              with_label=options.columns.label_column is not None, metadata=run)
    store = ShardedOutput(options.output, processes.rank, processes.world_size)
    processes.run_on_main(lambda: store.prepare(run, options.resume, options.overwrite, errors_path))

    precision = bf16_autocast(pipe) if options.precision == "bf16" else contextlib.nullcontext()
    failure, n_curves = None, 0
    try:
        with precision:
            n_curves = _embed_my_share(options, processes, store, embedder, schema)
    except InputError as exc:
        failure = str(exc)
    failures = [f for f in processes.gather(failure) if f is not None]
    n_total = max(processes.gather(n_curves))  # every process reads every curve's slot
    if failures or n_total == 0:
        processes.barrier()
        if processes.is_main:
            store.discard()
        raise InputError(failures[0] if failures else "no light curves to embed")

    processes.barrier()
    n_embedded, n_skipped = processes.run_on_main(lambda: store.publish(errors_path, schema)) or (0, 0)
    if processes.is_main and n_embedded == 0:
        raise InputError(f"none of the light curves could be embedded; the reasons are listed in {errors_path}")
    return EmbedSummary(options.output, n_embedded, n_skipped, errors_path, processes.is_main)


def _embed_my_share(
    options: EmbedOptions, processes: _Processes, store: ShardedOutput, embedder: WindowEmbedder, schema: Any
) -> int:
    """Embed this process's curves chunk by chunk; returns the number of curves in the whole input."""
    done = store.done_chunks()
    chunk: list[tuple[int, CurveSlot]] = []
    chunk_number = n_curves = 0
    slots = iter_curve_slots(options.inputs, options.columns)
    with tqdm(unit="curve", desc="embedding", disable=not (options.progress and processes.is_main),
              file=sys.stderr) as bar:
        for ordinal, slot in enumerate(slots):
            n_curves += 1
            if ordinal % processes.world_size != processes.rank:
                continue
            chunk.append((ordinal, slot))
            if len(chunk) == options.chunk_size:
                if chunk_number not in done:
                    _embed_chunk(options, store, embedder, schema, chunk_number, chunk)
                    _release_memory()
                bar.update(len(chunk))
                chunk, chunk_number = [], chunk_number + 1
        if chunk and chunk_number not in done:
            _embed_chunk(options, store, embedder, schema, chunk_number, chunk)
        bar.update(len(chunk))
    return n_curves


def _release_memory() -> None:
    """Between chunks, hand back what Arrow's pool and glibc's heap keep of the last chunk's buffers: their sizes
    differ from chunk to chunk, and the kept pieces made the process grow with the number of curves."""
    pa.default_memory_pool().release_unused()
    release_freed_memory()


def _embed_chunk(
    options: EmbedOptions,
    store: ShardedOutput,
    embedder: WindowEmbedder,
    schema: Any,
    chunk_number: int,
    chunk: list[tuple[int, CurveSlot]],
) -> None:
    skipped = _SkipList(fail=options.on_error == "fail")
    loaded = []
    for ordinal, slot in chunk:
        try:
            loaded.append((ordinal, slot.load()))
        except InputError as error:
            skipped.add(ordinal, slot.source, slot.curve_id, None, None, str(error))
    table = schema.empty_table()
    if loaded:
        batch = embedder.extractor.clean_batch(
            [record.table for _, record in loaded],
            ids=[record.curve_id for _, record in loaded],
            bands=options.bands,
            band_column=options.band_column,
            on_error="collect",
        )
        for rejected in batch.rejected:
            ordinal, record = loaded[rejected.curve_index]
            reason = str(record_error(record, rejected.error))
            skipped.add(ordinal, record.source, record.curve_id, rejected.band, rejected.error.field, reason)
        embedded = embedder.embed(batch)
        for unit in np.flatnonzero(~embedded.finite):
            ordinal, record = loaded[batch.curve_index[unit]]
            band = None if batch.bands is None else batch.bands[batch.band_index[unit]]
            skipped.add(ordinal, record.source, record.curve_id, band, "embedding",
                        f"{record.source}: light curve {record.curve_id!r}: the embedding is not finite")
        keep = np.flatnonzero(embedded.finite)
        records = [loaded[i][1] for i in batch.curve_index[keep]]
        rows = {
            "id": [r.curve_id for r in records],
            "source": [r.source for r in records],
            "n_observations": batch.cleaned.lengths[keep],
            "n_windows": embedded.n_windows[keep],
            "label": ["" if r.label is None else str(r.label) for r in records],
        }
        if batch.bands is not None:
            rows["band"] = [batch.bands[b] for b in batch.band_index[keep]]
        table = embedding_table(schema, rows, embedded.vectors[keep])
    skipped.entries.sort(key=lambda entry: entry["ordinal"])
    store.write_shard(chunk_number, table, skipped.entries)
