"""Where ``astromer embed`` keeps its embeddings while it runs, and how it publishes them.

Embeddings are written as they are made, one Parquet *shard* per chunk of curves, into a work folder next to the
output, ``.<output name>.partial/``: ``part-<process>-<chunk>.parquet`` (each shard written atomically, so a shard
is complete or absent) and ``.astromer-run.json`` (the options of the run). Each shard also records, in its
metadata, the curves of its chunk that were skipped and why.

When every process has finished, the main process publishes the work folder: for an output ending in
``.parquet`` the shards are copied, in order, into that one file (atomically); for any other output the folder
itself becomes the output, a folder of Parquet shards that ``datasets.load_dataset("parquet", data_dir=...)`` loads
as one dataset. The skipped curves go to a CSV file. A run that fails removes the work folder. A run killed
outright leaves it: ``--resume`` continues from the shards there (after checking that the options match), and
``--overwrite`` discards it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hub_datasets.atomic import atomic_file, publish_folder, write_json_atomic
from modeling_astromer.errors import InputError

__all__ = ["ERROR_COLUMNS", "RUN_FILE", "ShardedOutput", "default_errors_path", "is_file_output"]

RUN_FILE = ".astromer-run.json"
#: Columns of the file listing the skipped curves.
ERROR_COLUMNS = ("path", "curve_id", "band", "field", "reason")
_SKIPPED_KEY = b"astromer_skipped"


def is_file_output(output: Path) -> bool:
    """An output ending in ``.parquet`` is one file; anything else is a folder of shards."""
    return output.name.lower().endswith(".parquet")


def default_errors_path(output: Path) -> Path:
    """``<output without .parquet>.errors.csv``, next to the output."""
    stem = output.name[: -len(".parquet")] if is_file_output(output) else output.name
    return output.with_name(f"{stem}.errors.csv")


@dataclass
class ShardedOutput:
    """The work folder of one run as seen by one process (``rank`` of ``world_size``)."""

    output: Path
    rank: int = 0
    world_size: int = 1
    created_folders: list[Path] = field(default_factory=list)  # made by prepare(), deepest first

    @property
    def work(self) -> Path:
        return self.output.parent / f".{self.output.name}.partial"

    def shard_path(self, chunk: int, rank: int | None = None) -> Path:
        return self.work / f"part-{self.rank if rank is None else rank:05d}-{chunk:06d}.parquet"

    def _shards(self) -> list[Path]:
        return sorted(self.work.glob("part-*.parquet")) if self.work.is_dir() else []

    # ---------------------------------------------------------------------------------------------- main process
    def prepare(self, run: dict[str, Any], resume: bool, overwrite: bool, errors_path: Path | None) -> None:
        """Check the output paths and set up the work folder (main process only, before the others start).

        Raises:
            InputError: an output (or errors file) that exists without ``overwrite``; a work folder left by an
                interrupted run without ``resume`` or ``overwrite``; ``resume`` with different options.
        """
        if self.output.exists() and not overwrite:
            raise InputError(f"{self.output} exists; pass --overwrite to replace it")
        if is_file_output(self.output) and self.output.is_dir():
            raise InputError(f"{self.output}: is a folder; give a file name ending in .parquet, or a folder name")
        if errors_path is not None and errors_path.exists() and not (overwrite or resume):
            raise InputError(f"{errors_path} exists; pass --overwrite to replace it")
        if self.work.exists():
            if resume:
                self._check_resumable(run)
                return
            if not overwrite:
                raise InputError(
                    f"an interrupted run left {self.work}; pass --resume to continue it or --overwrite to start again"
                )
            shutil.rmtree(self.work)
        folder = self.output.parent
        while not folder.exists():
            self.created_folders.append(folder)
            folder = folder.parent
        self.work.mkdir(parents=True)
        write_json_atomic(self.work / RUN_FILE, run)

    def _check_resumable(self, run: dict[str, Any]) -> None:
        try:
            previous = json.loads((self.work / RUN_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.work}: not the work folder of an 'astromer embed' run ({exc})") from exc
        changed = sorted(k for k in set(run) | set(previous) if run.get(k) != previous.get(k))
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} then, {run.get(k)!r} now" for k in changed)
            raise InputError(
                f"--resume: the interrupted run in {self.work} used other options ({details}); run with the same "
                "options, or pass --overwrite to start again"
            )

    def publish(self, errors_path: Path | None, schema: pa.Schema) -> tuple[int, int]:
        """Publish the finished work folder (main process, after every process has finished): the output, and
        the skipped curves to ``errors_path`` (CSV; not written when ``None``). When no row was written at all, only
        the errors file is written and the work folder is removed.

        Args:
            schema: the output's schema, with the metadata the output file carries.

        Returns:
            ``(rows written, curves skipped)``.
        """
        shards = self._shards()
        skipped = sorted(
            (entry for shard in shards for entry in self._skipped(shard)), key=lambda entry: entry["ordinal"]
        )
        n_rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
        if errors_path is not None:
            with atomic_file(errors_path) as temporary:
                pd.DataFrame(skipped, columns=list(ERROR_COLUMNS)).to_csv(temporary, index=False)
        if n_rows == 0:
            self.discard()
        elif is_file_output(self.output):
            self._merge_into_file(shards, schema)
            shutil.rmtree(self.work)
        else:
            (self.work / RUN_FILE).unlink(missing_ok=True)
            publish_folder(self.work, self.output)
        return n_rows, len(skipped)

    def _merge_into_file(self, shards: list[Path], schema: pa.Schema) -> None:
        # a shard is named by process then chunk; one file is written by one process, so this is input order
        with atomic_file(self.output) as temporary, pq.ParquetWriter(temporary, schema) as writer:
            for shard in shards:
                table = pq.read_table(shard)
                if table.num_rows:
                    writer.write_table(table.replace_schema_metadata(schema.metadata))

    def discard(self) -> None:
        """Remove the work folder and the folders :meth:`prepare` made for it while they are empty (a failed run
        leaves no output)."""
        shutil.rmtree(self.work, ignore_errors=True)
        for folder in self.created_folders:
            try:
                folder.rmdir()
            except OSError:
                break

    # ----------------------------------------------------------------------------------------------- any process
    def done_chunks(self) -> set[int]:
        """The chunks this process has already written (from an interrupted run)."""
        prefix = f"part-{self.rank:05d}-"
        return {int(p.stem[len(prefix):]) for p in self._shards() if p.name.startswith(prefix)}

    def write_shard(self, chunk: int, table: pa.Table, skipped: list[dict[str, Any]]) -> Path:
        """Write one chunk's rows and its skipped curves, atomically."""
        metadata = dict(table.schema.metadata or {})
        metadata[_SKIPPED_KEY] = json.dumps(skipped).encode()
        target = self.shard_path(chunk)
        with atomic_file(target) as temporary:
            pq.write_table(table.replace_schema_metadata(metadata), temporary)
        return target

    @staticmethod
    def _skipped(shard: Path) -> list[dict[str, Any]]:
        metadata = pq.read_schema(shard).metadata or {}
        return json.loads(metadata.get(_SKIPPED_KEY, b"[]"))
