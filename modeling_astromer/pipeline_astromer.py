# Copyright 2026 The astromer-hf developers. MIT licence.
"""A `transformers` pipeline that turns light curves into one Astromer embedding each.

Self-contained on purpose: this file is also shipped as Hub remote code (``custom_pipelines`` in ``config.json``),
so it imports only numpy, torch, ``transformers`` and its siblings ``configuration_astromer`` and ``errors`` (relative imports).

How one light curve becomes one vector:

1. the feature extractor validates and cleans the curve (keeping the requested bands) and cuts it into the official
   sequential windows of ``window_size`` observations (any length in; each window is centred on its own);
2. every window goes through the encoder and is pooled to one vector (``pooling``: ``"skip"`` the paper's
   gamma-weighted mean over the input embedding and every block, ``"mean"`` / ``"max"`` over the last block; always
   over observed points only); ``pooling=None`` keeps the last block's per-observation hidden states instead;
3. the window vectors of a curve are averaged: one `(hidden_size,)` vector per input curve (per band with a band
   list), in input order.

It is a :class:`~transformers.ChunkPipeline` whose chunks are windows, so ``batch_size`` counts *windows*: windows of
several curves share one forward pass and are regrouped per curve afterwards. Batched and unbatched results agree
to float32 round-off.

Astromer 2 windows are not padded to ``window_size``: a window of n observations runs at length n (batch size 1),
padded only to the longest window of its batch, or packed back to back (``cu_seqlens``) when the model's attention
implementation takes packed windows (:data:`PACKED_ATTENTION_IMPLEMENTATIONS`), so a short curve costs about
n / ``window_size`` of a full window. Astromer 1's outputs depend on padding, so its windows are always padded to
``window_size``.

Usage::

    from transformers import pipeline
    extractor = pipeline("feature-extraction", model="astromer/astromer-2", trust_remote_code=True)
    vectors = extractor([curve_a, curve_b], pooling="skip", batch_size=64)   # list of (256,) float32 arrays

With the package installed, ``import modeling_astromer`` registers the task ``"light-curve-feature-extraction"``
(no remote code needed), or pass ``pipeline_class=LightCurveFeatureExtractionPipeline``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from .configuration_astromer import POOLING_MODES
from .errors import LightCurveValidationError

__all__ = [
    "PACKED_ATTENTION_IMPLEMENTATIONS",
    "POOLING_MODES",
    "LightCurveFeatureExtractionPipeline",
    "packed_inference_inputs",
    "packed_token_bucket",
]

RETURN_TENSOR_MODES: tuple[str, ...] = ("np", "pt")

#: Attention implementations that attend within windows packed back to back without building a dense
#: (tokens x tokens) mask; ``import modeling_astromer`` registers them. With any other implementation the windows of
#: a batch are padded to the batch's longest window instead of packed.
PACKED_ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("astromer_varlen", "astromer_blocked")

_NOT_GIVEN = object()


def packed_token_bucket(n_tokens: int) -> int:
    """The token count a packed inference batch of ``n_tokens`` is padded to on a CPU: the next step of a geometric
    ladder of multiples of 64 with 8 steps per doubling (at most 9 % more tokens, 4-5 % on average).

    oneDNN and glibc's allocator keep state per GEMM shape; when every packed batch has its own token count, a bf16
    embedding process grew by about 1 GB per 100k short light curves, and stays flat with a few dozen shapes.
    """
    if n_tokens <= 64:
        return 64
    bucket = 64 * math.ceil(2 ** (math.ceil(8 * math.log2(n_tokens / 64)) / 8))
    return max(bucket, 64 * math.ceil(n_tokens / 64))


def packed_inference_inputs(
    magnitudes: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor, bucket: bool = False
) -> dict[str, Any]:
    """Keyword arguments of the encoder for windows laid back to back.

    Args:
        magnitudes, times: `(T,)` centred values of every window, one window after the other.
        lengths: `(n,)` observations per window (sum `T`).
        bucket: pad the batch with all-zero filler windows (each at most the longest window) to
            :func:`packed_token_bucket` tokens; their outputs come after the `n` real ones, to be dropped.

    Returns:
        ``magnitudes``, ``times``, ``attention_mask`` `(1, T')`, ``cu_seqlens`` int32 `(n' + 1,)` and ``max_seqlen``.
    """
    lengths = lengths.to(torch.int64)
    max_seqlen = int(lengths.max())
    if bucket:
        n_tokens = magnitudes.shape[0]
        missing = packed_token_bucket(n_tokens) - n_tokens
        full, rest = divmod(missing, max_seqlen)
        fillers = torch.tensor([max_seqlen] * full + ([rest] if rest else []), dtype=torch.int64)
        lengths = torch.cat([lengths, fillers.to(lengths.device)])
        magnitudes = torch.nn.functional.pad(magnitudes, (0, missing))
        times = torch.nn.functional.pad(times, (0, missing))
    return {
        "magnitudes": magnitudes[None],
        "times": times[None],
        "attention_mask": torch.ones((1, magnitudes.shape[0]), dtype=torch.long, device=magnitudes.device),
        "cu_seqlens": torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
        "max_seqlen": max_seqlen,
    }


@dataclass(frozen=True)
class _NumberedCurve:
    """One input light curve with its position in the call (and the caller's id), for error messages."""

    index: int
    curve: Any
    curve_id: Any = None


def _is_single_curve(inputs: Any) -> bool:
    """True for one light curve (an ``(L, 3)`` array or tensor, a structured array, a mapping, a DataFrame or a
    Table); False for a collection of curves (a list, tuple, generator, ``datasets.Dataset``, ``(N, L, 3)``)."""
    if isinstance(inputs, np.ndarray):
        return inputs.ndim != 3 and not (inputs.dtype.kind == "O" and inputs.ndim == 1)
    if isinstance(inputs, torch.Tensor):
        return inputs.dim() != 3
    if isinstance(inputs, Mapping) or hasattr(inputs, "colnames"):  # dict / astropy Table
        return True
    if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy"):  # pandas DataFrame
        return True
    return isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable)


def _numbered_stream(curves: Iterable[Any], ids: Iterable[Any] | None) -> Iterator[_NumberedCurve]:
    """Number the curves of an iterable lazily, pairing them with ``ids`` (checked to be as many)."""
    if ids is None:
        yield from (_NumberedCurve(i, curve) for i, curve in enumerate(curves))
        return
    missing = object()
    for i, (curve, curve_id) in enumerate(itertools.zip_longest(curves, ids, fillvalue=missing)):
        if curve is missing or curve_id is missing:
            raise ValueError(f"the ids and the light curves differ in number (one ran out at position {i})")
        yield _NumberedCurve(i, curve, curve_id)


def _renumber(error: LightCurveValidationError, item: _NumberedCurve) -> LightCurveValidationError:
    """The feature extractor sees one curve at a time (index 0); name the curve by its position in the call."""
    message = str(error)
    prefix = "light curve 0"
    if message.startswith(prefix):
        message = f"light curve {item.index}" + message[len(prefix) :]
    return LightCurveValidationError(
        message, curve_index=item.index, curve_id=item.curve_id, field=error.field
    )


def _as_output(tensor: torch.Tensor, return_tensors: str) -> Any:
    """A result tensor as requested; NumPy has no bfloat16 (a bf16 model, or bf16 autocast): widen to float32,
    which is exact."""
    if return_tensors == "pt":
        return tensor
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


class LightCurveFeatureExtractionPipeline(ChunkPipeline):
    """Light curves in, one embedding per light curve out.

    Inputs (one curve or a list of curves): ``(L, 3)`` arrays of ``(time, mag, err)``, mappings with time/mag/err
    columns (aliases such as ``mjd``/``magnitude``/``errmag`` are detected, case-insensitive), ``pandas.DataFrame``
    and astropy ``Table`` objects, an ``(N, L, 3)`` array of equal-length curves, or any iterable of curves (a
    generator, the rows of a ``datasets.Dataset`` with time/mag/err columns).

    Call parameters:
        pooling (`str` or `None`, defaults to `"skip"`): per-window pooling, one of ``"skip"``, ``"mean"``,
            ``"max"``; ``None`` returns per-observation hidden states instead: per curve a
            `(n_windows, window_size, hidden_size)` array of the last block's outputs, zero at padding positions.
        return_tensors (`str` or `bool`, defaults to `"np"`): ``"np"``/``False`` for numpy float32 arrays,
            ``"pt"``/``True`` for torch tensors.
        return_details (`bool`, defaults to `False`): return a dict per curve with ``embedding`` (or
            ``hidden_states``, ``attention_mask`` and ``window_start`` with ``pooling=None``), ``n_windows`` and
            ``n_observations`` (observations kept after cleaning) instead of the bare result.
        bands (`str` or list of `str`, optional): the band(s) to embed when the curves carry a band column (see
            ``AstromerFeatureExtractor``); a curve holding several bands is refused without it. One name keeps
            that band; a list embeds every band as its own light curve and returns, per curve, a dict
            ``{band: result}`` in the order given. A curve lacking a requested band is refused, naming it.
        band_column (`str`, optional): the band column, when it is not one of the detected names.
        ids (sequence, optional): one identifier per curve, used in error messages.
        batch_size (`int`): windows per forward pass.

    Returns:
        For one curve: a `(hidden_size,)` vector (or a dict, see ``return_details`` and ``bands``); for a list, tuple
        or array of curves: a list of them, in input order; for a generator or a ``datasets.Dataset``: an iterator
        that reads the input as it yields results (nothing is materialised). Invalid curves raise
        ``LightCurveValidationError`` naming the curve (position and id) and field.
    """

    _load_tokenizer = False
    _load_feature_extractor = True
    _load_image_processor = False
    _load_video_processor = False
    _load_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            raise ValueError(
                "LightCurveFeatureExtractionPipeline needs the Astromer feature extractor "
                "(preprocessor_config.json next to the weights, or pass feature_extractor=AstromerFeatureExtractor())"
            )
        self.model.eval()

    # ------------------------------------------------------------------------------------------------ parameters
    def _sanitize_parameters(
        self,
        pooling: Any = _NOT_GIVEN,
        return_tensors: str | bool | None = None,
        return_details: bool | None = None,
        bands: Any = None,
        band_column: str | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(
                f"unexpected arguments {sorted(kwargs)}; accepted: pooling, return_tensors, return_details, bands, "
                "band_column, ids"
            )
        preprocess_params: dict[str, Any] = {}
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if pooling is not _NOT_GIVEN:
            if pooling is not None and pooling not in POOLING_MODES:
                raise ValueError(f"pooling must be one of {list(POOLING_MODES)} or None, got {pooling!r}")
            forward_params["pooling"] = pooling
            postprocess_params["pooled"] = pooling is not None
        if return_tensors is not None:
            if isinstance(return_tensors, bool):
                return_tensors = "pt" if return_tensors else "np"
            if return_tensors not in RETURN_TENSOR_MODES:
                raise ValueError(
                    f"return_tensors must be one of {list(RETURN_TENSOR_MODES)}, True or False, got {return_tensors!r}"
                )
            postprocess_params["return_tensors"] = return_tensors
        if return_details is not None:
            postprocess_params["return_details"] = bool(return_details)
        if bands is not None:
            if isinstance(bands, (str, bytes)) or not isinstance(bands, Iterable):
                preprocess_params["bands"] = bands
                postprocess_params["band_names"] = None
            else:
                preprocess_params["bands"] = list(bands)
                postprocess_params["band_names"] = [str(b) for b in bands]
        if band_column is not None:
            preprocess_params["band_column"] = band_column
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs: Any, *args: Any, ids: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Embed one light curve or a collection of them (see the class docstring)."""
        if _is_single_curve(inputs):
            single_id = ids if ids is None or isinstance(ids, (str, bytes)) or np.isscalar(ids) else None
            if single_id is None and ids is not None:
                id_list = list(ids)
                if len(id_list) != 1:
                    raise ValueError(f"got {len(id_list)} ids for 1 light curve")
                single_id = id_list[0]
            return super().__call__([_NumberedCurve(0, inputs, single_id)], *args, **kwargs)[0]
        if isinstance(inputs, (list, tuple, np.ndarray, torch.Tensor)):
            curves = list(inputs)
            if not curves:
                raise LightCurveValidationError("no light curves given (empty list)", field="observations")
            id_list = [None] * len(curves) if ids is None else list(ids)
            if len(id_list) != len(curves):
                raise ValueError(f"got {len(id_list)} ids for {len(curves)} light curves")
            return super().__call__(list(_numbered_stream(curves, id_list)), *args, **kwargs)
        # generators, iterators, datasets: streamed, one curve read at a time as the results are consumed
        return super().__call__(_numbered_stream(inputs, ids), *args, **kwargs)

    # ---------------------------------------------------------------------------------------------- the 3 steps
    def _is_astromer1(self) -> bool:
        encoder = getattr(self.model, "astromer", self.model)
        return getattr(encoder.config, "attention_bias_mode", None) == "a1_query_key_bias"

    def _packs_windows(self) -> bool:
        encoder = getattr(self.model, "astromer", self.model)
        return (
            not self._is_astromer1()
            and getattr(encoder.config, "_attn_implementation", None) in PACKED_ATTENTION_IMPLEMENTATIONS
        )

    def preprocess(
        self, item: _NumberedCurve, bands: Any = None, band_column: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield one chunk per window: `(1, n)` float32 ``magnitudes``/``times`` and int64 ``attention_mask`` (``n``
        observations; Astromer 1: padded to ``window_size``), with the window's band position and start."""
        if not isinstance(item, _NumberedCurve):  # called directly on a raw curve
            item = _NumberedCurve(0, item)
        extractor = self.feature_extractor
        padded = self._is_astromer1()
        try:
            batch = extractor.clean_batch([item.curve], ids=[item.curve_id], bands=bands, band_column=band_column)
            features = extractor.window_features(batch, padding=padded)
        except LightCurveValidationError as error:
            raise _renumber(error, item) from error
        n_observations = batch.cleaned.lengths
        unit = features["light_curve_index"]
        if padded:
            windows = [slice(w, w + 1) for w in range(len(unit))]
        else:  # window w is the rows first[w] .. first[w] + length[w] of the flat arrays
            ends = np.cumsum(features["window_length"])
            windows = [slice(int(end - n), int(end)) for end, n in zip(ends, features["window_length"])]
        for w, rows in enumerate(windows):
            magnitudes = torch.from_numpy(features["magnitudes"][rows]).reshape(1, -1)
            yield {
                "magnitudes": magnitudes,
                "times": torch.from_numpy(features["times"][rows]).reshape(1, -1),
                "attention_mask": (torch.from_numpy(features["attention_mask"][rows]) if padded
                                   else torch.ones_like(magnitudes, dtype=torch.long)),
                "band_position": int(features["band_index"][w]),
                "window_start": int(features["window_start"][w]),
                "n_observations": int(n_observations[unit[w]]),
                "is_last": w == len(windows) - 1,
            }

    def _encoder_and_layer_logits(self) -> tuple[Any, torch.Tensor | None]:
        """The base encoder (heads keep it as ``.astromer``) and a fine-tuned gamma, when the model has one."""
        encoder = getattr(self.model, "astromer", self.model)
        layer_logits = getattr(self.model, "layer_logits", None)
        return encoder, layer_logits

    def _forward(self, model_inputs: dict[str, Any], pooling: str | None = "skip") -> dict[str, Any]:
        encoder, layer_logits = self._encoder_and_layer_logits()
        magnitudes, times = model_inputs["magnitudes"], model_inputs["times"]
        attention_mask = model_inputs["attention_mask"]
        packed: dict[str, Any] = {}
        real = attention_mask.bool()
        n_windows = magnitudes.shape[0]
        if self._packs_windows() and n_windows > 1:
            packed = packed_inference_inputs(magnitudes[real], times[real], real.sum(dim=1),
                                             bucket=magnitudes.device.type == "cpu")
            magnitudes, times, attention_mask = (packed.pop(key) for key in ("magnitudes", "times", "attention_mask"))
        extras = {key: model_inputs[key] for key in ("band_position", "window_start", "n_observations", "is_last")}
        if pooling is None:
            hidden = encoder(magnitudes=magnitudes, times=times, attention_mask=attention_mask,
                             **packed).last_hidden_state
            if packed:  # back to the batch's padded layout
                unpacked = hidden.new_zeros((*real.shape, hidden.shape[-1]))
                unpacked[real] = hidden[0, : int(real.sum())]
                hidden = unpacked
            # the tensor must come first: the batch unroller reads the batch size from the first key
            return {"window_hidden_states": hidden, "window_mask": real, **extras}
        embeddings = encoder.embed(
            magnitudes,
            times,
            attention_mask,
            pooling=pooling,
            layer_logits=layer_logits if pooling == "skip" else None,
            **packed,
        )[:n_windows]
        return {"window_embedding": embeddings, **extras}

    def postprocess(
        self,
        window_outputs: list[dict[str, Any]],
        return_tensors: str = "np",
        return_details: bool = False,
        pooled: bool = True,
        band_names: list[str] | None = None,
    ) -> Any:
        """Average the window vectors of each curve (or each band of it; accumulated in float64) into one
        `(hidden_size,)` vector in the model's dtype (float32 for NumPy output when that dtype is bfloat16); with
        ``pooling=None`` lay each window's hidden states into a `(window_size, hidden_size)` row."""
        per_band: dict[int, list[dict[str, Any]]] = {}
        for out in window_outputs:
            per_band.setdefault(int(_first(out["band_position"])), []).append(out)
        results = {
            position: self._unit_result(outputs, return_tensors, return_details, pooled)
            for position, outputs in per_band.items()
        }
        if band_names is None:
            return results[0]
        return {band_names[position]: result for position, result in sorted(results.items())}

    def _unit_result(
        self, window_outputs: list[dict[str, Any]], return_tensors: str, return_details: bool, pooled: bool
    ) -> Any:
        n_observations = int(_first(window_outputs[0]["n_observations"]))
        if pooled:
            windows = torch.cat([out["window_embedding"] for out in window_outputs], dim=0)  # (n_windows, D)
            vector = windows.to(torch.float64).mean(dim=0).to(windows.dtype)
            embedding = _as_output(vector, return_tensors)
            if not return_details:
                return embedding
            return {"embedding": embedding, "n_windows": int(windows.shape[0]), "n_observations": n_observations}
        extractor = self.feature_extractor
        width = extractor.window_size
        hidden_size = window_outputs[0]["window_hidden_states"].shape[-1]
        lengths = [int(out["window_mask"].sum()) for out in window_outputs]
        layout = torch.zeros((len(window_outputs), width), dtype=torch.bool)
        positions = torch.arange(width)
        for w, n in enumerate(lengths):
            layout[w] = positions < n if extractor.padding_side == "right" else positions >= width - n
        states = window_outputs[0]["window_hidden_states"].new_zeros((len(window_outputs), width, hidden_size))
        for w, out in enumerate(window_outputs):
            states[w][layout[w]] = out["window_hidden_states"][0][out["window_mask"][0]]
        hidden = _as_output(states, return_tensors)
        if not return_details:
            return hidden
        mask = layout.long()
        starts = torch.tensor([int(_first(out["window_start"])) for out in window_outputs])
        return {
            "hidden_states": hidden,
            "attention_mask": mask if return_tensors == "pt" else mask.numpy(),
            "window_start": starts if return_tensors == "pt" else starts.numpy(),
            "n_windows": len(window_outputs),
            "n_observations": n_observations,
        }


def _first(value: Any) -> Any:
    """A per-window value as the batch unroller leaves it (a scalar, or a one-element list or tensor)."""
    if isinstance(value, (list, tuple)):
        value = value[0]
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1)[0].item()
    return value
