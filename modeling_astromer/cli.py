"""The ``astromer`` command line: embeddings, training, conversion, plots and the demo.

Subcommands (``astromer <command> --help`` for each):

- ``embed``: CSV/Parquet light curves (files or folders) -> one Parquet file with one embedding per light curve;
- ``pretrain`` / ``finetune`` / ``evaluate``: the training tools of ``astromer_train`` (arguments passed through);
- ``convert``: an official TensorFlow checkpoint -> a Hugging Face folder;
- ``plot``: ``reconstruction``, ``learning-curves`` or ``embeddings`` (PNG);
- ``demo``: the end-to-end main job (sample survey -> pretraining -> few-shot evaluation -> plots and report).

Errors in the user's input (paths, unreadable files, missing or unknown columns, invalid light curves) print one
clear message on stderr and exit with status 1; no partial output is left behind (files are written to a temporary
name and renamed at the end) and nothing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .allocator import keep_freed_memory

__all__ = [
    "BUNDLED_WEIGHTS_DIR",
    "CLIError",
    "LightCurveRecord",
    "build_parser",
    "bundled_models",
    "embed_records_to_parquet",
    "main",
    "read_light_curve_files",
    "resolve_model",
]

BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "astromer1-macho"
LIGHT_CURVE_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")
ID_COLUMN_ALIASES: tuple[str, ...] = (
    "id",
    "object_id",
    "objid",
    "oid",
    "newid",
    "source_id",
    "name",
    "star_id",
)
TRAIN_COMMANDS: dict[str, str] = {
    "pretrain": "astromer_train.pretrain",
    "finetune": "astromer_train.finetune",
    "evaluate": "astromer_train.evaluate",
}
EMBEDDING_PREFIX = "emb_"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class CLIError(Exception):
    """An error in the user's input: printed as ``astromer: error: <message>`` with exit status 1."""


# ------------------------------------------------------------------------------------------------------ models
def bundled_models() -> dict[str, Path]:
    """Model folders shipped inside the package, by name (e.g. ``astromer1-macho``)."""
    if not BUNDLED_WEIGHTS_DIR.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(BUNDLED_WEIGHTS_DIR.iterdir())
        if folder.is_dir() and (folder / "config.json").is_file()
    }


def resolve_model(name_or_path: str) -> str:
    """Map ``--model`` to something ``from_pretrained`` loads: a bundled name, a folder or a Hub repo id.

    Raises:
        CLIError: for a path that does not exist or a folder without ``config.json``.
    """
    bundled = bundled_models()
    if name_or_path in bundled:
        return str(bundled[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CLIError(
                f"--model {name_or_path}: not a model folder (expected a folder holding config.json)"
            )
        return str(path)
    if not _REPO_ID.fullmatch(name_or_path):
        raise CLIError(
            f"--model {name_or_path}: no such folder and not a Hub repo id (owner/name); bundled models: "
            f"{', '.join(bundled) or 'none installed'}"
        )
    return name_or_path  # a Hub repo id


def _quiet_transformers() -> None:
    """Keep the command output readable: no weight-loading progress bars or load reports."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_pipeline(model: str, batch_size: int) -> Any:
    from .pipeline import load_pipeline

    resolved = resolve_model(model)
    try:
        return load_pipeline(resolved, batch_size=batch_size)
    except OSError as exc:  # missing repo / files, offline without a cached copy
        raise CLIError(f"--model {model}: cannot load the model ({exc})") from exc
    except ValueError as exc:
        raise CLIError(f"--model {model}: not an Astromer model folder ({exc})") from exc


def _bf16_autocast(pipe: Any) -> Any:
    """bf16 autocast on the pipeline's device; on a CPU the linear layers also go through oneDNN (bias and tanh fused
    into the GEMM, see ``astromer_kernels.cpu_linear``) when that package and operator are available."""
    import torch

    device = pipe.model.device
    if device.type == "cpu":
        try:
            from astromer_kernels.cpu_linear import use_onednn_linears
        except ImportError:
            pass
        else:
            use_onednn_linears(pipe.model)
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------- light-curve files
@dataclass
class LightCurveRecord:
    """One light curve read from a file: its id, the file it came from and its columns."""

    curve_id: str
    source: str
    table: Any  # a pandas DataFrame (or a mapping of time/mag/err columns)
    label: Any = None


def _is_light_curve_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(LIGHT_CURVE_SUFFIXES)


def _expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their CSV/Parquet files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise CLIError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_light_curve_file(p))
            if not found:
                raise CLIError(f"{path}: the folder holds no {'/'.join(LIGHT_CURVE_SUFFIXES)} files")
            files.extend(found)
        elif _is_light_curve_file(path):
            files.append(path)
        else:
            raise CLIError(
                f"{path}: unsupported file type; expected one of {', '.join(LIGHT_CURVE_SUFFIXES)}"
            )
    return files


def _read_table(path: Path) -> Any:
    import pandas as pd

    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        kind = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"
        raise CLIError(f"{path}: cannot read it as {kind} ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise CLIError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from exc


def _find_column(
    columns: Sequence[str], wanted: str | None, aliases: Sequence[str], path: Path, what: str
) -> str | None:
    """The column named ``wanted`` (exact), else the first alias present (case-insensitive), else None."""
    if wanted is not None:
        if wanted not in columns:
            raise CLIError(
                f"{path}: no {what} column {wanted!r}; the file has columns {list(map(str, columns))}"
            )
        return wanted
    lowered = {str(c).lower(): c for c in columns}
    return next((lowered[a] for a in aliases if a in lowered), None)


def read_light_curve_files(
    inputs: Sequence[str | os.PathLike],
    id_column: str | None = None,
    time_column: str | None = None,
    mag_column: str | None = None,
    err_column: str | None = None,
    label_column: str | None = None,
) -> list[LightCurveRecord]:
    """Read light curves from CSV/Parquet files and folders.

    A file holds either one light curve (columns time/mag/err, aliases such as ``mjd``/``magnitude``/``errmag``
    detected case-insensitively; its id is the file name without suffix) or many in long format, one row per
    observation, grouped by an id column (``--id-column``, or one of ``id``, ``object_id``, ``newID``, ...).

    Raises:
        CLIError: naming the file for a missing path, an unreadable file or an unknown column.
    """
    import pandas as pd

    records: list[LightCurveRecord] = []
    overrides = {"time": time_column, "mag": mag_column, "err": err_column}
    for path in _expand_inputs(inputs):
        table = _read_table(path)
        if len(table.columns) == 0 or len(table) == 0:
            raise CLIError(f"{path}: the file holds no observations")
        for name, column in overrides.items():
            if column is not None and column not in table.columns:
                raise CLIError(
                    f"{path}: no {name} column {column!r}; the file has columns {list(map(str, table.columns))}"
                )
        rename = {column: name for name, column in overrides.items() if column is not None}
        id_name = _find_column(list(table.columns), id_column, ID_COLUMN_ALIASES, path, "id")
        label_name = (
            _find_column(list(table.columns), label_column, (), path, "label") if label_column else None
        )
        stem = path.name[: -len(next(s for s in LIGHT_CURVE_SUFFIXES if path.name.lower().endswith(s)))]
        groups = (
            [(stem, table)] if id_name is None else list(table.groupby(id_name, sort=False, dropna=False))
        )
        for curve_id, group in groups:
            if isinstance(curve_id, float) and np.isnan(curve_id) or curve_id is pd.NA:
                raise CLIError(
                    f"{path}: {int(group.shape[0])} row(s) have no value in the id column {id_name!r}"
                )
            label = None
            if label_name is not None:
                values = group[label_name].unique()
                if len(values) != 1:
                    raise CLIError(
                        f"{path}: light curve {curve_id!r} has {len(values)} different values in the label column "
                        f"{label_name!r}"
                    )
                label = values[0].item() if hasattr(values[0], "item") else values[0]
            columns = group.drop(columns=[c for c in (id_name, label_name) if c is not None]).rename(
                columns=rename
            )
            records.append(LightCurveRecord(str(curve_id), str(path), columns.reset_index(drop=True), label))
    return records


# ------------------------------------------------------------------------------------------------------ embed
def _strip_curve_label(message: str) -> str:
    """Drop the feature extractor's leading ``light curve i (id ...)`` label (we name the curve ourselves)."""
    if message.startswith("light curve") and ": " in message:
        return message.split(": ", 1)[1]
    return message


def _default_file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _check_output(output: Path, overwrite: bool, suffixes: tuple[str, ...]) -> None:
    if not output.name.lower().endswith(suffixes):
        raise CLIError(f"{output}: the output file name must end in {' or '.join(suffixes)}")
    if output.is_dir():
        raise CLIError(f"{output}: is a folder; give a file name")
    if output.exists() and not overwrite:
        raise CLIError(f"{output} exists; pass --overwrite to replace it")


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
        CLIError: for an invalid light curve (naming its file and id) or an output that exists without
            ``overwrite``. The output is never left half-written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .feature_extraction_astromer import LightCurveValidationError

    target = Path(output)
    _check_output(target, overwrite, (".parquet",))
    if not records:
        raise CLIError("no light curves to embed")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(temporary_name)
    with_labels = any(r.label is not None for r in records)
    writer = None
    try:
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
                    record = chunk[exc.curve_index] if exc.curve_index is not None else None
                    where = f"{record.source}: light curve {record.curve_id!r}" if record else "input"
                    raise CLIError(f"{where}: {_strip_curve_label(str(exc))}") from exc
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
                    writer = pq.ParquetWriter(temporary, schema)
                writer.write_table(table.cast(writer.schema))
                bar.update(len(chunk))
        writer.close()
        writer = None
        if target.exists() and not overwrite:  # appeared while we were working
            raise CLIError(f"{target} exists; pass --overwrite to replace it")
        os.chmod(temporary, _default_file_mode())  # mkstemp creates 0600
        os.replace(temporary, target)
    except BaseException:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return target


def read_embeddings(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """Read an ``astromer embed`` Parquet file: ``(DataFrame of the non-embedding columns, (N, D) float32)``."""
    import pandas as pd

    source = Path(path)
    if not source.is_file():
        raise CLIError(f"{source}: no such file")
    frame = _read_table(source) if source.suffix.lower() in (".parquet", ".pq") else None
    if frame is None:
        raise CLIError(f"{source}: expected a Parquet file written by 'astromer embed'")
    embedding_columns = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    if not embedding_columns:
        raise CLIError(
            f"{source}: no {EMBEDDING_PREFIX}* columns; expected a file written by 'astromer embed'"
        )
    meta = frame.drop(columns=embedding_columns)
    return pd.DataFrame(meta), frame[embedding_columns].to_numpy(dtype=np.float32)


def _command_embed(args: argparse.Namespace) -> int:
    output = Path(args.output)
    _check_output(output, args.overwrite, (".parquet",))
    records = read_light_curve_files(
        args.inputs,
        id_column=args.id_column,
        time_column=args.time_column,
        mag_column=args.mag_column,
        err_column=args.err_column,
        label_column=args.label_column,
    )
    if any(Path(r.source).resolve() == output.resolve() for r in records):
        raise CLIError(f"{output}: the output file is also an input")
    _quiet_transformers()
    pipe = _load_pipeline(args.model, args.batch_size)
    precision = _bf16_autocast(pipe) if args.precision == "bf16" else contextlib.nullcontext()
    with precision:
        embed_records_to_parquet(
            records,
            pipe,
            output,
            pooling=args.pooling,
            overwrite=args.overwrite,
            progress=not args.quiet,
            metadata={"model": args.model, "precision": args.precision},
        )
    print(f"wrote {len(records)} embeddings to {output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------- convert
def _command_convert(args: argparse.Namespace) -> int:
    from .convert import CheckpointConversionError, convert_tf_checkpoint
    from .tf_checkpoint import TFCheckpointError

    try:
        destination = convert_tf_checkpoint(
            args.src, args.dst, variant=args.variant, overwrite=args.overwrite
        )
    except (CheckpointConversionError, TFCheckpointError, FileExistsError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"converted {args.src} -> {destination}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------- plot
def _command_plot_reconstruction(args: argparse.Namespace) -> int:
    from .plots import masked_reconstruction_examples, plot_reconstruction

    output = Path(args.output)
    _check_output(output, args.overwrite, (".png",))
    records = read_light_curve_files(args.inputs, id_column=args.id_column)[: args.n_curves]
    _quiet_transformers()
    from transformers import AutoFeatureExtractor

    from .modeling_astromer import AstromerForMaskedReconstruction

    resolved = resolve_model(args.model)
    try:
        model = AstromerForMaskedReconstruction.from_pretrained(resolved)
        extractor = AutoFeatureExtractor.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--model {args.model}: cannot load the model ({exc})") from exc
    from .feature_extraction_astromer import LightCurveValidationError

    try:
        examples = masked_reconstruction_examples(
            model,
            extractor,
            [r.table for r in records],
            titles=[r.curve_id for r in records],
            hidden_fraction=args.hidden_fraction,
            seed=args.seed,
        )
    except LightCurveValidationError as exc:
        record = records[exc.curve_index] if exc.curve_index is not None else None
        where = f"{record.source}: light curve {record.curve_id!r}" if record else "input"
        raise CLIError(f"{where}: {_strip_curve_label(str(exc))}") from exc
    plot_reconstruction(examples, output, overwrite=args.overwrite)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _command_plot_learning_curves(args: argparse.Namespace) -> int:
    from .plots import plot_learning_curves

    output = Path(args.output)
    _check_output(output, args.overwrite, (".png",))
    log = Path(args.log)
    if not log.is_file():
        raise CLIError(f"{log}: no such file")
    try:
        plot_learning_curves(log, output, metrics=args.metrics, overwrite=args.overwrite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CLIError(f"{log}: {exc}") from exc
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _command_plot_embeddings(args: argparse.Namespace) -> int:
    from .plots import plot_embedding_map

    output = Path(args.output)
    _check_output(output, args.overwrite, (".png",))
    meta, embeddings = read_embeddings(args.embeddings)
    labels = None
    if args.labels is not None:
        label_table = _read_table(Path(args.labels)) if Path(args.labels).is_file() else None
        if label_table is None:
            raise CLIError(f"{args.labels}: no such file")
        missing = [c for c in ("id", args.label_column) if c not in label_table.columns]
        if missing:
            raise CLIError(
                f"{args.labels}: missing column(s) {missing}; it has {list(map(str, label_table.columns))}"
            )
        mapping = dict(zip(label_table["id"].astype(str), label_table[args.label_column]))
        unknown = [i for i in meta["id"].astype(str) if i not in mapping]
        if unknown:
            raise CLIError(f"{args.labels}: no label for {len(unknown)} id(s), e.g. {unknown[:3]}")
        labels = [mapping[i] for i in meta["id"].astype(str)]
    elif args.label_column in meta.columns:
        labels = [str(v) for v in meta[args.label_column].fillna("")]
    if embeddings.shape[0] < 2:
        raise CLIError(
            f"{args.embeddings}: need at least 2 embeddings for a PCA map, got {embeddings.shape[0]}"
        )
    plot_embedding_map(embeddings, labels, output, overwrite=args.overwrite)
    print(f"wrote {output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------- pass-through commands
def _run_module_main(module_name: str, argv: list[str], what: str) -> int:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CLIError(f"'{what}' needs {module_name}, which is not installed ({exc})") from exc
        raise
    return int(module.main(argv) or 0)


# ----------------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full ``astromer`` argument parser (the pass-through commands parse their own arguments)."""
    from .pipeline_astromer import POOLING_MODES

    parser = argparse.ArgumentParser(
        prog="astromer",
        description="Astromer light-curve embeddings: embed, train, evaluate, convert, plot, demo.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model_help = (
        f"model folder, Hub repo id or bundled model name ({', '.join(bundled_models()) or 'none installed'}); "
        f"default {DEFAULT_MODEL}"
    )

    embed = commands.add_parser(
        "embed",
        help="light curves (CSV/Parquet files or folders) -> one embedding per light curve (Parquet)",
        description=(
            "Embed light curves. Each CSV/Parquet file holds one light curve (columns time/mag/err; aliases such as "
            "mjd, magnitude, errmag are detected) or many in long format grouped by an id column. Folders are "
            "searched recursively. Output: one row per light curve with id, source, n_observations, n_windows and "
            "the embedding columns emb_000..."
        ),
    )
    embed.add_argument("inputs", nargs="+", help="CSV/Parquet files or folders of them")
    embed.add_argument("-o", "--output", required=True, help="output Parquet file")
    embed.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    embed.add_argument(
        "--pooling", choices=POOLING_MODES, default="skip", help="per-window pooling (default skip)"
    )
    embed.add_argument(
        "--batch-size", type=_positive_int, default=64, help="windows per forward pass (default 64)"
    )
    embed.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default: the reference numbers) or bf16 autocast: several times faster on CPUs with bf16 "
        "instructions and on GPUs; embeddings change by about 1%% of their scale",
    )
    embed.add_argument(
        "--id-column", help="column grouping rows into light curves (default: detect id/object_id/...)"
    )
    embed.add_argument("--time-column", help="time column name (default: detect time/mjd/...)")
    embed.add_argument("--mag-column", help="magnitude column name (default: detect mag/magnitude/...)")
    embed.add_argument("--err-column", help="uncertainty column name (default: detect err/errmag/...)")
    embed.add_argument("--label-column", help="a per-curve class column copied to the output as 'label'")
    embed.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=_command_embed)

    for name, module in TRAIN_COMMANDS.items():
        commands.add_parser(
            name,
            help=f"run {module} (arguments passed through; 'astromer {name} --help' for them)",
            add_help=False,
        )

    convert = commands.add_parser(
        "convert",
        help="official TensorFlow checkpoint -> Hugging Face model folder",
        description="Convert an Astromer 1 or 2 TensorFlow checkpoint (folder or prefix) without TensorFlow.",
    )
    convert.add_argument("src", help="checkpoint folder or prefix (.index + .data-*)")
    convert.add_argument(
        "dst", help="output folder (config.json, model.safetensors, preprocessor_config.json)"
    )
    convert.add_argument(
        "--variant", choices=("astromer1", "astromer2"), help="default: detected from the names"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.set_defaults(handler=_command_convert)

    plot = commands.add_parser("plot", help="figures (PNG): reconstruction, learning curves, embedding map")
    kinds = plot.add_subparsers(dest="kind", metavar="KIND", required=True)

    reconstruction = kinds.add_parser(
        "reconstruction",
        help="hide points of a few light curves and plot the model's reconstruction with error bars",
        description="Hide a random fraction of the first window of each light curve and plot the reconstruction.",
    )
    reconstruction.add_argument("inputs", nargs="+", help="CSV/Parquet light-curve files or folders")
    reconstruction.add_argument("-o", "--output", required=True, help="output PNG")
    reconstruction.add_argument(
        "--model", default=DEFAULT_MODEL, help=model_help + " (needs the reconstruction head)"
    )
    reconstruction.add_argument(
        "--n-curves", type=_positive_int, default=4, help="light curves to show (default 4)"
    )
    reconstruction.add_argument(
        "--hidden-fraction", type=_fraction, default=0.5, help="fraction hidden (default 0.5)"
    )
    reconstruction.add_argument("--seed", type=int, default=0, help="seed of the hidden points (default 0)")
    reconstruction.add_argument("--id-column", help="id column of long-format files")
    reconstruction.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it exists"
    )
    reconstruction.set_defaults(handler=_command_plot_reconstruction)

    learning = kinds.add_parser(
        "learning-curves",
        help="metrics against steps from a training run's JSONL tracker log",
        description="Plot every numeric metric of a JSONL tracker log (one JSON object per line) against the step.",
    )
    learning.add_argument("log", help="the JSONL tracker log of a training run")
    learning.add_argument("-o", "--output", required=True, help="output PNG")
    learning.add_argument("--metrics", nargs="+", help="only these metrics (default: all)")
    learning.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    learning.set_defaults(handler=_command_plot_learning_curves)

    embeddings = kinds.add_parser(
        "embeddings",
        help="2-D PCA map of embeddings coloured by class",
        description="PCA map of an 'astromer embed' Parquet file, coloured by its label column or a labels file.",
    )
    embeddings.add_argument("embeddings", help="Parquet file written by 'astromer embed'")
    embeddings.add_argument("-o", "--output", required=True, help="output PNG")
    embeddings.add_argument("--labels", help="CSV/Parquet file with columns id and --label-column")
    embeddings.add_argument("--label-column", default="label", help="class column (default 'label')")
    embeddings.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    embeddings.set_defaults(handler=_command_plot_embeddings)

    commands.add_parser(
        "demo",
        help="the main job: sample survey -> pretraining -> few-shot evaluation -> plots, embeddings, report",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``astromer`` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    try:
        if arguments and arguments[0] in TRAIN_COMMANDS:
            return _run_module_main(TRAIN_COMMANDS[arguments[0]], arguments[1:], arguments[0])
        if arguments and arguments[0] == "demo":
            from .demo import main as demo_main

            return int(demo_main(arguments[1:]) or 0)
        args = build_parser().parse_args(arguments)
        return int(args.handler(args) or 0)
    except CLIError as exc:
        print(f"astromer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("astromer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
