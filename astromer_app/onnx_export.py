"""Export an Astromer encoder to ONNX: fixed-width windows in, named embeddings out.

Input conventions (``convention``):

- ``"light-curve"``: the interface of the ``light-curve`` package's Astromer files, so that
  ``light_curve.embed.Astromer1(session)`` / ``Astromer2(session)`` can wrap an ``onnxruntime.InferenceSession`` of
  the export: ``input`` (centred magnitudes), ``times`` (centred times, days) and ``mask_in`` (1 = observation,
  0 = padding), each float32 ``[batch, W, 1]``;
- ``"hf"``: the arguments of ``AstromerModel.forward``: ``magnitudes`` and ``times`` float32 and ``attention_mask``
  int64 (1 = observation), each ``[batch, W]``.

Outputs (any of them, in the order asked), ``D = hidden_size``:

- ``mean``: ``[batch, D]`` masked mean of the last block over the observed points;
- ``max``: ``[batch, D]`` masked maximum of the last block over the observed points;
- ``sequence``: ``[batch, W, D]`` the last block at every position, padding included (``last_hidden_state``);
- ``skip``: ``[batch, D]`` the paper's gamma-weighted skip embedding (with a fine-tuned classifier's gamma when
  the model is one, equal weights otherwise).

The batch axis is dynamic; ``W`` is the model's ``window_size``, fixed because Astromer 1's outputs depend on the
padded layout. The weights are stored inside the ``.onnx`` file unless they exceed 1.5 GiB (one ONNX file cannot
exceed 2 GiB); then they go to ``<name>.onnx.data`` beside it. A JSON description is written to
``<name>.onnx.json`` (model, conventions, window size, the preprocessing a caller must apply, and the parity check's
numbers). Every window must hold at least one observation; the file does not check that.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from hub_datasets.atomic import atomic_file, write_json_atomic
from modeling_astromer import (
    AstromerFeatureExtractor,
    AstromerForSequenceClassification,
    AstromerModel,
    resolve_model,
)
from modeling_astromer.errors import AstromerError, InputError
from modeling_astromer.modeling_astromer import masked_max, masked_mean, skip_embedding

from .onnx_parity import ParityReport, check_parity, check_windows

__all__ = [
    "CONVENTIONS",
    "DEFAULT_OUTPUTS",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "ExportedModel",
    "OnnxExportError",
    "WindowEmbeddingGraph",
    "export_onnx",
    "load_encoder",
    "parse_outputs",
]

#: Every output an export can carry, and the default set (the outputs of the ``light-curve`` package's files).
OUTPUT_NAMES: tuple[str, ...] = ("mean", "max", "sequence", "skip")
DEFAULT_OUTPUTS: tuple[str, ...] = ("mean", "max", "sequence")
#: ONNX opset of the exported graph (the ``light-curve`` package needs >= 13; ONNX Runtime >= 1.14 runs 18).
ONNX_OPSET = 18
#: Weights larger than this go to an external data file: a protobuf message (one .onnx file) is limited to 2 GiB.
EXTERNAL_DATA_THRESHOLD_BYTES = 1536 * 1024**2
#: The only implementations whose graph torch.export traces into plain ONNX operators.
EXPORTABLE_ATTENTION = ("sdpa", "eager")
SIDECAR_SUFFIX = ".json"
ONNX_EXTRA_HINT = "pip install 'astromer-hf[onnx]'"


class OnnxExportError(AstromerError):
    """The export failed its parity check, or a package it needs is missing."""


@dataclass(frozen=True)
class Convention:
    """The input names and layout of one ONNX interface."""

    name: str
    input_names: tuple[str, str, str]  # magnitudes, times, observation mask
    channel_axis: bool  # inputs are [batch, W, 1] instead of [batch, W]
    mask_dtype: torch.dtype
    description: str

    def input_shape(self, window_size: int) -> list[Any]:
        return ["batch", window_size, 1] if self.channel_axis else ["batch", window_size]

    def feeds(self, magnitudes: np.ndarray, times: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """ONNX Runtime inputs from `(B, W)` float32 magnitudes/times and a `(B, W)` 0/1 observation mask."""
        arrays = (
            np.asarray(magnitudes, dtype=np.float32),
            np.asarray(times, dtype=np.float32),
            np.asarray(attention_mask, dtype=np.float32 if self.mask_dtype == torch.float32 else np.int64),
        )
        if self.channel_axis:
            arrays = tuple(a[..., None] for a in arrays)
        return dict(zip(self.input_names, arrays))


CONVENTIONS: dict[str, Convention] = {
    "light-curve": Convention(
        "light-curve",
        ("input", "times", "mask_in"),
        channel_axis=True,
        mask_dtype=torch.float32,
        description="inputs of the light-curve package's Astromer ONNX files (light_curve.embed.Astromer1/Astromer2)",
    ),
    "hf": Convention(
        "hf",
        ("magnitudes", "times", "attention_mask"),
        channel_axis=False,
        mask_dtype=torch.int64,
        description="inputs named and shaped like AstromerModel.forward's arguments",
    ),
}

OUTPUT_DESCRIPTIONS: dict[str, str] = {
    "mean": "masked mean of the last block over the observed points",
    "max": "masked maximum of the last block over the observed points",
    "sequence": "the last block at every position, padding included (PyTorch's last_hidden_state)",
    "skip": "the paper's gamma-weighted skip embedding over the input embedding (Astromer 2) and every block",
}


def parse_outputs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"mean,max"`` (or a sequence of names) -> ``("mean", "max")``, each name known and given once.

    Raises:
        InputError: for an empty list, an unknown name or a repeated name.
    """
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    if not names or any(not n for n in names):
        raise InputError(f"--outputs {text!r}: give a comma-separated list of {', '.join(OUTPUT_NAMES)}")
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}; choose from {', '.join(OUTPUT_NAMES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"output {repeated[0]!r} is named more than once")
    return tuple(names)


# ----------------------------------------------------------------------------------------------------- the graph
class WindowEmbeddingGraph(nn.Module):
    """What is exported: one forward pass of the encoder and the requested poolings of it.

    Inputs `(B, W)` (or `(B, W, 1)` with ``channel_axis``): centred magnitudes, centred times and the observation
    mask (any dtype, nonzero = observed). Returns the outputs named in ``outputs``, in that order (shapes in the
    module docstring). The poolings are the functions ``AstromerModel.embed`` uses.
    """

    def __init__(
        self,
        encoder: AstromerModel,
        outputs: Sequence[str],
        layer_logits: torch.Tensor | None = None,
        channel_axis: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.outputs = tuple(outputs)
        self.channel_axis = channel_axis
        if layer_logits is not None:
            self.register_buffer("layer_logits", layer_logits.detach().clone())
        else:
            self.layer_logits = None

    def forward(
        self, magnitudes: torch.Tensor, times: torch.Tensor, observed: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        if self.channel_axis:
            magnitudes, times, observed = magnitudes.squeeze(-1), times.squeeze(-1), observed.squeeze(-1)
        attention_mask = (observed != 0).long()
        with_skip = "skip" in self.outputs
        encoded = self.encoder(
            magnitudes=magnitudes, times=times, attention_mask=attention_mask, output_hidden_states=with_skip
        )
        last = encoded.last_hidden_state
        results: dict[str, torch.Tensor] = {}
        for name in self.outputs:
            if name == "mean":
                results[name] = masked_mean(last, attention_mask)
            elif name == "max":
                results[name] = masked_max(last, attention_mask)
            elif name == "sequence":
                results[name] = last
            else:
                means = self.encoder.layer_means(
                    encoded.hidden_states, magnitudes, times, attention_mask, inputs_had_mask_positions=False
                )
                logits = self.layer_logits
                if logits is None:
                    logits = means.new_full((means.shape[1],), 1.0 / means.shape[1])
                results[name] = skip_embedding(means, logits)
        return tuple(results[name] for name in self.outputs)


# ---------------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedEncoder:
    """An encoder ready to export, with what its description needs."""

    encoder: AstromerModel
    layer_logits: torch.Tensor | None  # a fine-tuned classifier's gamma
    extractor: AstromerFeatureExtractor
    architecture: str


def load_encoder(model: str, attn_implementation: str = "sdpa") -> LoadedEncoder:
    """The float32 encoder of a bundled model name, model folder or Hub repo id, in eval mode.

    A fine-tuned ``AstromerForSequenceClassification`` gives its encoder and its gamma (``layer_logits``); any other
    Astromer checkpoint gives its encoder (a pretraining head is left out).

    Raises:
        InputError: when the reference is not a loadable Astromer model.
    """
    if attn_implementation not in EXPORTABLE_ATTENTION:
        raise InputError(
            f"attn_implementation {attn_implementation!r} cannot be exported; use one of {EXPORTABLE_ATTENTION}"
        )
    resolved = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise InputError(f"model {model!r}: cannot read its configuration ({_first_line(exc)})") from exc
    if getattr(config, "model_type", None) != "astromer":
        raise InputError(
            f"model {model!r}: not an Astromer model (model_type {getattr(config, 'model_type', None)!r})"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    is_classifier = "AstromerForSequenceClassification" in architectures
    model_class = AstromerForSequenceClassification if is_classifier else AstromerModel
    try:
        with _quiet_loading():
            loaded = model_class.from_pretrained(
                resolved, attn_implementation=attn_implementation, dtype=torch.float32
            )
    except (OSError, ValueError) as exc:
        raise InputError(f"model {model!r}: cannot load the weights ({_first_line(exc)})") from exc
    loaded.eval()
    encoder = loaded.astromer if is_classifier else loaded
    layer_logits = loaded.layer_logits.detach() if is_classifier else None
    try:
        extractor = AstromerFeatureExtractor.from_pretrained(resolved)
    except (OSError, ValueError):
        extractor = AstromerFeatureExtractor(window_size=encoder.config.window_size)
    if extractor.window_size != encoder.config.window_size:
        raise InputError(
            f"model {model!r}: preprocessor window_size {extractor.window_size} differs from the model's "
            f"{encoder.config.window_size}"
        )
    return LoadedEncoder(encoder, layer_logits, extractor, model_class.__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No weight-loading progress bars or load reports."""
    verbosity, progress_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------------- export
@dataclass
class ExportedModel:
    """What :func:`export_onnx` wrote."""

    path: Path
    metadata_path: Path
    external_data_path: Path | None
    parity: ParityReport | None
    metadata: dict[str, Any]


def _require(module: str, purpose: str) -> None:
    try:
        importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        raise OnnxExportError(f"{purpose} needs the {module} package: {ONNX_EXTRA_HINT}") from None


def _check_destination(output: Path, overwrite: bool) -> Path:
    """The path of the JSON description; raises InputError when `output` cannot be (re)written."""
    if not output.name.lower().endswith(".onnx"):
        raise InputError(f"{output}: the output file name must end in .onnx")
    if output.is_dir():
        raise InputError(f"{output}: is a folder; give a file name")
    metadata_path = output.with_name(output.name + SIDECAR_SUFFIX)
    for path in (output, metadata_path):
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{output}: cannot write there ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{output}: cannot write there (no write permission in {ancestor})")
    return metadata_path


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's progress lines, warnings and missing-torchvision notices stay out of the command output."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _example_inputs(convention: Convention, window_size: int) -> tuple[torch.Tensor, ...]:
    """Two windows (one full, one half padded) to trace with."""
    generator = torch.Generator().manual_seed(0)
    observed = torch.ones(2, window_size, dtype=convention.mask_dtype)
    observed[1, window_size // 2 :] = 0
    magnitudes = torch.randn(2, window_size, generator=generator) * observed
    times = torch.linspace(-100.0, 100.0, window_size).expand(2, -1) * observed
    inputs = (magnitudes, times, observed)
    return tuple(x.unsqueeze(-1) for x in inputs) if convention.channel_axis else inputs


def _torch_to_onnx(graph: WindowEmbeddingGraph, convention: Convention, window_size: int) -> Any:
    """The ONNX program (an ``onnx_ir`` model inside) of `graph` with a dynamic batch axis."""
    batch = torch.export.Dim("batch")
    dynamic_shapes = {name: {0: batch} for name in ("magnitudes", "times", "observed")}
    with _quiet_export():
        return torch.onnx.export(
            graph,
            _example_inputs(convention, window_size),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=list(convention.input_names),
            output_names=list(graph.outputs),
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in ("astromer-hf", "torch", "onnx", "onnxscript", "onnxruntime"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _describe(
    model: str,
    loaded: LoadedEncoder,
    convention: Convention,
    outputs: Sequence[str],
    external_data: str | None,
) -> dict[str, Any]:
    """The JSON description of an export (also stored in the file's metadata as ``astromer``)."""
    config = loaded.encoder.config
    window_size = config.window_size
    hidden = config.hidden_size
    is_astromer1 = config.attention_bias_mode == "a1_query_key_bias"
    extractor = loaded.extractor
    mask_dtype = "float32" if convention.mask_dtype == torch.float32 else "int64"
    output_shapes = {"sequence": ["batch", window_size, hidden]}
    skip_terms = "the block outputs" if is_astromer1 else "the input embedding and the block outputs"
    skip_weights = "the fine-tuned g" if loaded.layer_logits is not None else "equal weights"
    return {
        "format": "astromer-onnx",
        "format_version": 1,
        "model": {
            "source": model,
            "variant": "astromer1" if is_astromer1 else "astromer2",
            "architecture": loaded.architecture,
            "hidden_size": hidden,
            "num_hidden_layers": config.num_hidden_layers,
            "attention_bias_mode": config.attention_bias_mode,
            "fine_tuned_gamma": loaded.layer_logits is not None,
        },
        "convention": convention.name,
        "convention_description": convention.description,
        "opset": ONNX_OPSET,
        "window_size": window_size,
        "inputs": [
            {"name": name, "dtype": dtype, "shape": convention.input_shape(window_size), "content": content}
            for name, dtype, content in zip(
                convention.input_names,
                ("float32", "float32", mask_dtype),
                (
                    "magnitudes minus the window's mean magnitude over its observations; 0 at padding",
                    "times (days) minus the window's mean time over its observations; 0 at padding",
                    "1 = observation, 0 = padding (every window needs at least one observation)",
                ),
            )
        ],
        "outputs": [
            {"name": name, "shape": output_shapes.get(name, ["batch", hidden]), "content": OUTPUT_DESCRIPTIONS[name]}
            for name in outputs
        ],
        "pooling": {
            "mean": "masked mean of the last block (padding excluded)",
            "max": "masked maximum of the last block (padding excluded)",
            "skip": f"mean_k(softmax(g)_k * masked mean of Z_k) over {skip_terms} with {skip_weights}",
            "per_light_curve": "average the window vectors of each light curve",
        },
        "preprocessing": {
            "cleaning": (
                f"drop observations whose magnitude or error is not finite or whose error is outside "
                f"(0, {extractor.max_error}); sort by time; repeated times: {extractor.duplicate_times}"
            ),
            "windows": (
                f"sequential windows of {window_size} observations starting at 0, {window_size}, 2*{window_size}, "
                f"..., each start clamped to L-{window_size} (the last window overlaps the previous one); a curve "
                f"of L <= {window_size} observations is one window"
            ),
            "centring": (
                "per window, subtract the mean time and the mean magnitude of its observations, computed in float64, "
                "then cast to float32; times are not rescaled"
            ),
            "padding": f"on the right to {window_size} positions with 0 (mask 0)",
            "astromer1_padding": (
                f"always pad to exactly {window_size}: Astromer 1's outputs depend on the padded layout"
                if is_astromer1
                else None
            ),
        },
        "external_data": external_data,
        "exported_with": _package_versions(),
    }


def export_onnx(
    model: str,
    output: str | os.PathLike,
    *,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    convention: str = "light-curve",
    check: bool = True,
    check_curves: Sequence[Any] | None = None,
    tolerance: float = 1e-5,
    overwrite: bool = False,
    attn_implementation: str = "sdpa",
    external_data: bool | None = None,
) -> ExportedModel:
    """Export `model` (bundled name, model folder or Hub repo id) to the ONNX file `output`.

    Args:
        model: any saved or bundled Astromer model (Astromer 1 or 2; pretrained, a pretraining checkpoint or a
            fine-tuned classifier).
        output: the ``.onnx`` file; its description goes to ``<output>.json``.
        outputs: names from :data:`OUTPUT_NAMES` (a list or ``"mean,max"``).
        convention: ``"light-curve"`` or ``"hf"`` (see the module docstring).
        check: run the file in ONNX Runtime and compare every output with PyTorch before publishing it
            (:func:`astromer_app.onnx_parity.check_parity`).
        check_curves: light curves (anything the feature extractor accepts) whose windows join the check; by
            default seeded synthetic MACHO-like curves.
        tolerance: the parity bound for models whose float32 outputs are accurate to better than that.
        overwrite: replace an existing output and description.
        attn_implementation: ``"sdpa"`` or ``"eager"``: the attention traced into the graph.
        external_data: store the weights in ``<output>.data``; by default only when they exceed 1.5 GiB.

    Returns:
        The paths written, the description and the parity report.

    Raises:
        InputError: for a model that is not an Astromer model, an output that cannot be written, an unknown output.
        OnnxExportError: when the parity check fails (nothing is written) or the ``onnx`` extra is missing.
    """
    destination = Path(output)
    names = parse_outputs(outputs)
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    interface = CONVENTIONS[convention]
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise InputError(f"--tolerance must be a positive number, got {tolerance}")
    metadata_path = _check_destination(destination, overwrite)
    for package in ("onnx", "onnxscript"):
        _require(package, "ONNX export")
    if check:
        _require("onnxruntime", "the parity check")
    from onnxscript import ir as onnx_ir

    loaded = load_encoder(model, attn_implementation)
    window_size = loaded.encoder.config.window_size
    graph = WindowEmbeddingGraph(
        loaded.encoder, names, loaded.layer_logits, channel_axis=interface.channel_axis
    ).eval()
    program = _torch_to_onnx(graph, interface, window_size)
    weight_bytes = sum(
        value.const_value.nbytes
        for value in program.model.graph.initializers.values()
        if value.const_value is not None
    )
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES if external_data is None else bool(external_data)
    data_path = destination.with_name(destination.name + ".data") if external else None
    metadata = _describe(model, loaded, interface, names, data_path.name if data_path else None)
    program.model.metadata_props["astromer"] = json.dumps(metadata, sort_keys=True)

    parity = None
    try:
        with atomic_file(destination, suffix=".onnx") as temporary:
            onnx_ir.save(program.model, temporary, external_data=data_path.name if data_path else None)
            if check:
                windows = check_windows(loaded.extractor, check_curves, window_size)
                parity = check_parity(
                    temporary, loaded.encoder, names, interface.feeds, windows, loaded.layer_logits, tolerance
                )
                if not parity.passed:
                    raise OnnxExportError(f"parity check failed: {parity.failure_summary()}; nothing was written")
                metadata["parity"] = parity.as_dict()
            write_json_atomic(metadata_path, metadata)
    except OSError as exc:
        if data_path is not None:
            data_path.unlink(missing_ok=True)
        raise InputError(f"{destination}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        if data_path is not None:
            data_path.unlink(missing_ok=True)
        raise
    return ExportedModel(destination, metadata_path, data_path, parity, metadata)
