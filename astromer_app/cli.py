"""The ``astromer`` command line: embeddings, training, conversion, plots and the demo.

Subcommands (``astromer <command> --help`` for each):

- ``embed``: CSV/Parquet light curves (files, folders, datasets folders) -> Parquet with one embedding per light
  curve (per band with ``--bands``), streamed, keep-going (``--on-error skip``), resumable, over many processes;
- ``pretrain`` / ``finetune`` / ``evaluate``: the training entry points of ``astromer_train`` (same options);
- ``push-to-hub``: a complete Hub repository (weights, configs, remote code, model card), uploaded or written;
- ``convert``: an official TensorFlow checkpoint -> a Hugging Face folder;
- ``export onnx``: a model -> an ONNX file (``light-curve`` or ``hf`` inputs), checked in ONNX Runtime;
- ``plot``: ``reconstruction``, ``learning-curves`` or ``embeddings`` (PNG);
- ``demo``: the end-to-end main job (real RR Lyrae and MACHO curves -> released-model embeddings -> few-shot table
  against light-curve features -> reconstruction, map and report).

Errors in the user's input (paths, unreadable files, missing or unknown columns, invalid light curves) print one
clear message on stderr and exit with status 1; no partial output is left behind (files are written to a temporary
name and renamed at the end) and nothing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import AutoFeatureExtractor

from astromer_kernels.allocator import keep_freed_memory
from astromer_kernels.registry import packed_attention_implementations
from astromer_train import evaluate_fewshot as evaluate_script
from astromer_train import finetune as finetune_script
from astromer_train import pretrain as pretrain_script
from astromer_train.cli_utils import open_fraction, positive_int
from modeling_astromer import (
    POOLING_MODES,
    AstromerForMaskedReconstruction,
    LightCurveValidationError,
    bundled_models,
    resolve_model,
)
from modeling_astromer.bundled import DEFAULT_MODEL
from modeling_astromer.errors import AstromerError, InputError

from . import demo, release
from .convert import PROVENANCE_FIELDS, convert_tf_checkpoint
from .dataset_commands import folds_main, publish_main
from .embedding import check_output, quiet_transformers, read_embeddings
from .embedding_store import ERROR_COLUMNS
from .light_curve_files import ColumnNames, invalid_record_error, read_light_curve_files, read_table
from .onnx_export import CONVENTIONS, DEFAULT_OUTPUTS, OUTPUT_NAMES, export_onnx
from .plots import (
    masked_reconstruction_examples,
    plot_embedding_map,
    plot_learning_curves,
    plot_reconstruction,
)
from .survey_embedding import ON_ERROR_MODES, EmbedOptions, run_embed

__all__ = ["build_parser", "main"]

#: Commands whose arguments are parsed by their own entry point (``astromer <command> --help`` shows them).
PASS_THROUGH_COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (pretrain_script.main, "masked-reconstruction pretraining (Accelerate)"),
    "finetune": (finetune_script.main, "the paper's fine-tuning protocol on one few-shot split"),
    "evaluate": (evaluate_script.main, "the few-shot evaluation table (folds x samples per class)"),
    "folds": (folds_main, "write the paper's few-shot splits of a labelled light-curve dataset"),
    "publish-dataset": (publish_main, "write a survey and its folds as Parquet + dataset card (and push it)"),
    "push-to-hub": (release.main, "write (and upload) a complete Hub repository for a model"),
    "demo": (demo.main, "the main job: real light curves -> embeddings -> few-shot table vs features -> report"),
}


def _command_embed(args: argparse.Namespace) -> int:
    options = EmbedOptions(
        inputs=list(args.inputs),
        output=Path(args.output),
        model=args.model,
        pooling=args.pooling,
        batch_size=args.batch_size,
        precision=args.precision,
        bands=args.bands,
        band_column=args.band_column,
        columns=ColumnNames(args.id_column, args.time_column, args.mag_column, args.err_column, args.label_column),
        on_error=args.on_error,
        errors=None if args.errors is None else Path(args.errors),
        resume=args.resume,
        overwrite=args.overwrite,
        chunk_size=args.chunk_size,
        attn_implementation=args.attn_implementation,
        padded=args.padded,
        progress=not args.quiet,
    )
    summary = run_embed(options)
    if summary.is_main_process:
        skipped = f"; skipped {summary.n_skipped}, listed in {summary.errors}" if summary.errors is not None else ""
        print(f"wrote {summary.n_embedded} embeddings to {summary.output}{skipped}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------- convert
def _command_convert(args: argparse.Namespace) -> int:
    try:
        provenance = {field: getattr(args, f"source_{field}") for field in PROVENANCE_FIELDS}
        destination = convert_tf_checkpoint(
            args.src, args.dst, variant=args.variant, overwrite=args.overwrite, provenance=provenance
        )
    except (FileExistsError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from exc
    print(f"converted {args.src} -> {destination}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ export onnx
def _command_export_onnx(args: argparse.Namespace) -> int:
    curves = None
    if args.check_curves:
        curves = [record.table for record in read_light_curve_files(args.check_curves)]
    quiet_transformers()
    exported = export_onnx(
        args.model,
        args.output,
        outputs=args.outputs,
        convention=args.convention,
        check=args.check,
        check_curves=curves,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    )
    if exported.parity is not None:
        print("\n".join(exported.parity.lines()), file=sys.stderr)
    print(f"wrote {exported.path} and {exported.metadata_path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------- plot
def _command_plot_reconstruction(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output(output, args.overwrite, (".png",))
    records = read_light_curve_files(args.inputs, id_column=args.id_column)[: args.n_curves]
    quiet_transformers()
    resolved = resolve_model(args.model)
    try:
        model = AstromerForMaskedReconstruction.from_pretrained(resolved)
        extractor = AutoFeatureExtractor.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise InputError(f"--model {args.model}: cannot load the model ({exc})") from exc
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
        raise invalid_record_error(records, exc) from exc
    plot_reconstruction(examples, output, overwrite=args.overwrite)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _command_plot_learning_curves(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output(output, args.overwrite, (".png",))
    log = Path(args.log)
    if not log.is_file():
        raise InputError(f"{log}: no such file")
    try:
        plot_learning_curves(log, output, metrics=args.metrics, overwrite=args.overwrite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{log}: {exc}") from exc
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _command_plot_embeddings(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output(output, args.overwrite, (".png",))
    meta, embeddings = read_embeddings(args.embeddings)
    labels = None
    if args.labels is not None:
        label_table = read_table(Path(args.labels)) if Path(args.labels).is_file() else None
        if label_table is None:
            raise InputError(f"{args.labels}: no such file")
        missing = [c for c in ("id", args.label_column) if c not in label_table.columns]
        if missing:
            raise InputError(
                f"{args.labels}: missing column(s) {missing}; it has {list(map(str, label_table.columns))}"
            )
        mapping = dict(zip(label_table["id"].astype(str), label_table[args.label_column]))
        unknown = [i for i in meta["id"].astype(str) if i not in mapping]
        if unknown:
            raise InputError(f"{args.labels}: no label for {len(unknown)} id(s), e.g. {unknown[:3]}")
        labels = [mapping[i] for i in meta["id"].astype(str)]
    elif args.label_column in meta.columns:
        labels = [str(v) for v in meta[args.label_column].fillna("")]
    if embeddings.shape[0] < 2:
        raise InputError(
            f"{args.embeddings}: need at least 2 embeddings for a PCA map, got {embeddings.shape[0]}"
        )
    plot_embedding_map(embeddings, labels, output, overwrite=args.overwrite)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error, naming the user's path rather than a temporary sibling of it."""
    reason = error.strerror or str(error)
    if error.filename is None:
        return reason
    path = Path(error.filename)
    if path.name.startswith("."):  # a hidden temporary next to the real output: name the folder
        return f"cannot write in {path.parent}: {reason}"
    return f"{path}: {reason}"


# ----------------------------------------------------------------------------------------------------- parser
def _band_list(text: str) -> list[str]:
    bands = [band.strip() for band in text.split(",")]
    if not all(bands) or len(set(bands)) != len(bands):
        raise argparse.ArgumentTypeError(f"expected distinct band names separated by commas, got {text!r}")
    return bands


PROVENANCE_HELP: dict[str, str] = {
    "repository": "where the checkpoint was published (URL)",
    "commit": "the repository commit it was taken from",
    "archive": "the archive it came in (e.g. macho_a0.zip)",
    "archive_sha256": "SHA-256 of that archive",
    "training_data": "what the weights were trained on (e.g. 'MACHO LMC R band, 1.5M light curves')",
    "license": "licence identifier of the weights (e.g. mit)",
    "citation": "the paper to cite",
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``astromer`` argument parser (the pass-through commands parse their own arguments)."""
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
        help="light curves (CSV/Parquet files, folders, datasets folders) -> one embedding per light curve (Parquet)",
        description=(
            "Embed light curves. Each CSV/Parquet file holds one light curve (columns time/mag/err; aliases such as "
            "mjd, magnitude, errmag are detected) or many in long format grouped by an id column; a Parquet file "
            "with list columns or a datasets folder (save_to_disk) holds one light curve per row. Folders are "
            "searched recursively. The input is read in chunks and the embeddings are written as they are made, so "
            "memory does not grow with the number of curves. Output: one row per light curve (per light curve and "
            "band with --bands) with id, band, source, n_observations, n_windows and 'embedding' (a fixed-size "
            "list of float32); a name ending in .parquet gives one file, any other name a folder of Parquet shards "
            "(required with several processes: 'accelerate launch --num_processes N -m astromer_app embed ...'), "
            "which datasets.load_dataset('parquet', data_dir=...) loads as one dataset."
        ),
    )
    embed.add_argument("inputs", nargs="+", help="CSV/Parquet files, folders of them, or datasets folders")
    embed.add_argument("-o", "--output", required=True, help="output Parquet file (*.parquet) or folder")
    embed.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    embed.add_argument(
        "--pooling", choices=POOLING_MODES, default="skip", help="per-window pooling (default skip)"
    )
    embed.add_argument(
        "--batch-size", type=positive_int, default=64,
        help="windows per forward pass (default 64); packed batches hold batch-size x 200 observations",
    )
    embed.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default: the reference numbers) or bf16 autocast: several times faster on CPUs with bf16 "
        "instructions and on GPUs; embeddings change by about 1%% of their scale",
    )
    embed.add_argument(
        "--bands", type=_band_list,
        help="comma-separated bands to embed (e.g. r or g,r), each as its own light curve: one output row per "
        "(id, band). Needed when a curve holds several bands (column band/filter/passband/fid/filtercode)",
    )
    embed.add_argument("--band-column", help="band column name (default: detect band/filter/passband/fid/...)")
    embed.add_argument(
        "--on-error", choices=ON_ERROR_MODES, default="fail",
        help="fail (default): the first unreadable file or invalid curve stops the run, nothing is written; skip: "
        "embed every good curve and list the others in --errors",
    )
    embed.add_argument(
        "--errors",
        help=f"CSV file listing the skipped curves ({', '.join(ERROR_COLUMNS)}); default: next to the output, "
        "OUTPUT.errors.csv (OUTPUT without .parquet)",
    )
    embed.add_argument(
        "--resume", action="store_true",
        help="continue a run that was interrupted (killed, out of time): the curves already written are kept",
    )
    embed.add_argument(
        "--chunk-size", type=positive_int, default=1024,
        help="curves read, embedded and written at a time, per process (default 1024)",
    )
    embed.add_argument(
        "--attn-implementation", default="auto",
        choices=("auto", "sdpa", "eager", *packed_attention_implementations()),
        help="auto (default): Astromer 2 runs its windows packed back to back (astromer_blocked on a CPU, "
        "astromer_varlen on a GPU), Astromer 1 padded with sdpa",
    )
    embed.add_argument(
        "--padded", action="store_true",
        help="pad every window to 200 observations (the reference layout; slower for short curves)",
    )
    embed.add_argument(
        "--id-column", help="column grouping rows into light curves (default: detect id/object_id/...)"
    )
    embed.add_argument("--time-column", help="time column name (default: detect time/mjd/...)")
    embed.add_argument("--mag-column", help="magnitude column name (default: detect mag/magnitude/...)")
    embed.add_argument("--err-column", help="uncertainty column name (default: detect err/errmag/...)")
    embed.add_argument("--label-column", help="a per-curve class column copied to the output as 'label'")
    embed.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=_command_embed)

    for name, (_, summary) in PASS_THROUGH_COMMANDS.items():
        commands.add_parser(name, help=f"{summary} ('astromer {name} --help' for its options)", add_help=False)

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
    provenance = convert.add_argument_group(
        "provenance", "recorded in config.json (conversion_source) and shown on model cards"
    )
    for field in PROVENANCE_FIELDS:
        provenance.add_argument(
            f"--{field.replace('_', '-')}", dest=f"source_{field}", help=PROVENANCE_HELP[field]
        )
    convert.set_defaults(handler=_command_convert)

    export = commands.add_parser("export", help="a model -> a file for another runtime (ONNX)")
    export_formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = export_formats.add_parser(
        "onnx",
        help="a model -> an ONNX file with a dynamic batch axis, checked against PyTorch in ONNX Runtime",
        description=(
            "Export an Astromer 1 or 2 model (bundled, saved or fine-tuned) to ONNX: fixed windows of the model's "
            "window_size in, named embeddings out, weights inside the file (beside it above 1.5 GiB). A JSON "
            "description (preprocessing, conventions, parity numbers) is written to OUTPUT.json. With "
            "--convention light-curve the file is a drop-in for light_curve.embed.Astromer1/Astromer2. Needs "
            "pip install 'astromer-hf[onnx]'."
        ),
    )
    onnx.add_argument("model", help="model folder, Hub repo id or bundled model name")
    onnx.add_argument("output", help="output .onnx file")
    onnx.add_argument(
        "--outputs",
        default=",".join(DEFAULT_OUTPUTS),
        help=f"comma-separated outputs from {', '.join(OUTPUT_NAMES)} (default {','.join(DEFAULT_OUTPUTS)})",
    )
    onnx.add_argument(
        "--convention",
        choices=tuple(CONVENTIONS),
        default="light-curve",
        help="light-curve: inputs input/times/mask_in [batch, W, 1] float32 (default); hf: magnitudes/times "
        "[batch, W] float32 and attention_mask [batch, W] int64",
    )
    onnx.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the file in ONNX Runtime and compare every output with PyTorch; nothing is written when it "
        "fails (default: on)",
    )
    onnx.add_argument(
        "--check-curves",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="CSV/Parquet light curves whose windows join the check (default: synthetic MACHO-like curves)",
    )
    onnx.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="parity bound, raised to 10x PyTorch float32's own error where that is larger (default 1e-5)",
    )
    onnx.add_argument("--overwrite", action="store_true", help="replace the output files if they exist")
    onnx.set_defaults(handler=_command_export_onnx)

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
        "--n-curves", type=positive_int, default=4, help="light curves to show (default 4)"
    )
    reconstruction.add_argument(
        "--hidden-fraction", type=open_fraction, default=0.5, help="fraction hidden (default 0.5)"
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``astromer`` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    try:
        if arguments and arguments[0] in PASS_THROUGH_COMMANDS:
            entry_point, _ = PASS_THROUGH_COMMANDS[arguments[0]]
            return int(entry_point(arguments[1:]) or 0)
        args = build_parser().parse_args(arguments)
        return int(args.handler(args) or 0)
    except AstromerError as exc:
        print(f"astromer: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an output that cannot be written, a full disk, a file that vanished
        print(f"astromer: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("astromer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
