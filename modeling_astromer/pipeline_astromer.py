# Copyright 2026 The astromer-hf developers. MIT licence.
"""A `transformers` pipeline that turns light curves into one Astromer embedding each.

Self-contained on purpose: this file is also shipped as Hub remote code (``custom_pipelines`` in ``config.json``),
so it imports only numpy, torch, ``transformers`` and its siblings ``configuration_astromer`` and ``errors`` (relative imports).

How one light curve becomes one vector:

1. the feature extractor validates and cleans the curve and cuts it into the official sequential windows of
   ``window_size`` observations (any length in; each window is centred on its own);
2. every window goes through the encoder and is pooled to one vector (``pooling``: ``"skip"`` the paper's
   gamma-weighted mean over the input embedding and every block, ``"mean"`` / ``"max"`` over the last block; always
   over observed points only);
3. the window vectors of a curve are averaged: one `(hidden_size,)` vector per input curve, in input order.

It is a :class:`~transformers.ChunkPipeline` whose chunks are windows, so ``batch_size`` counts *windows*: windows of
several curves share one forward pass and are regrouped per curve afterwards. Batched and unbatched results agree
to float32 round-off.

Usage::

    from transformers import pipeline
    extractor = pipeline("feature-extraction", model="astromer/astromer-2", trust_remote_code=True)
    vectors = extractor([curve_a, curve_b], pooling="skip", batch_size=64)   # list of (256,) float32 arrays

With the package installed, ``import modeling_astromer`` registers the task ``"light-curve-feature-extraction"``
(no remote code needed), or pass ``pipeline_class=LightCurveFeatureExtractionPipeline``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from .configuration_astromer import POOLING_MODES
from .errors import LightCurveValidationError

__all__ = ["POOLING_MODES", "LightCurveFeatureExtractionPipeline"]

RETURN_TENSOR_MODES: tuple[str, ...] = ("np", "pt")


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


def _renumber(error: LightCurveValidationError, item: _NumberedCurve) -> LightCurveValidationError:
    """The feature extractor sees one curve at a time (index 0); name the curve by its position in the call."""
    message = str(error)
    prefix = "light curve 0"
    if message.startswith(prefix):
        message = f"light curve {item.index}" + message[len(prefix) :]
    return LightCurveValidationError(
        message, curve_index=item.index, curve_id=item.curve_id, field=error.field
    )


class LightCurveFeatureExtractionPipeline(ChunkPipeline):
    """Light curves in, one embedding per light curve out.

    Inputs (one curve or a list of curves): ``(L, 3)`` arrays of ``(time, mag, err)``, mappings with time/mag/err
    columns (aliases such as ``mjd``/``magnitude``/``errmag`` are detected, case-insensitive), ``pandas.DataFrame``
    and astropy ``Table`` objects, an ``(N, L, 3)`` array of equal-length curves, or any iterable of curves (a
    generator, the rows of a ``datasets.Dataset`` with time/mag/err columns).

    Call parameters:
        pooling (`str`, defaults to `"skip"`): per-window pooling, one of ``"skip"``, ``"mean"``, ``"max"``.
        return_tensors (`str`, defaults to `"np"`): ``"np"`` for numpy float32 vectors, ``"pt"`` for torch tensors.
        return_details (`bool`, defaults to `False`): return a dict per curve with ``embedding``,
            ``n_windows`` and ``n_observations`` (observations kept after cleaning) instead of the bare vector.
        ids (sequence, optional): one identifier per curve, used in error messages.
        batch_size (`int`): windows per forward pass.

    Returns:
        For one curve: a `(hidden_size,)` vector (or a dict, see ``return_details``); for a list: a list of them, in
        input order. Invalid curves raise ``LightCurveValidationError`` naming the curve (position and id) and field.
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
        pooling: str | None = None,
        return_tensors: str | None = None,
        return_details: bool | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(
                f"unexpected arguments {sorted(kwargs)}; accepted: pooling, return_tensors, return_details, ids"
            )
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if pooling is not None:
            if pooling not in POOLING_MODES:
                raise ValueError(f"pooling must be one of {list(POOLING_MODES)}, got {pooling!r}")
            forward_params["pooling"] = pooling
        if return_tensors is not None:
            if return_tensors not in RETURN_TENSOR_MODES:
                raise ValueError(
                    f"return_tensors must be one of {list(RETURN_TENSOR_MODES)}, got {return_tensors!r}"
                )
            postprocess_params["return_tensors"] = return_tensors
        if return_details is not None:
            postprocess_params["return_details"] = bool(return_details)
        return {}, forward_params, postprocess_params

    def __call__(self, inputs: Any, *args: Any, ids: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Embed one light curve or a list of them (see the class docstring)."""
        single = _is_single_curve(inputs)
        curves = [inputs] if single else list(inputs)
        if not curves:
            raise LightCurveValidationError("no light curves given (empty list)", field="observations")
        if ids is None:
            id_list: list[Any] = [None] * len(curves)
        else:
            id_list = [ids] if single and (isinstance(ids, (str, bytes)) or np.isscalar(ids)) else list(ids)
            if len(id_list) != len(curves):
                raise ValueError(f"got {len(id_list)} ids for {len(curves)} light curves")
        numbered = [
            _NumberedCurve(i, curve, curve_id) for i, (curve, curve_id) in enumerate(zip(curves, id_list))
        ]
        outputs = super().__call__(numbered, *args, **kwargs)
        return outputs[0] if single else outputs

    # ---------------------------------------------------------------------------------------------- the 3 steps
    def preprocess(self, item: _NumberedCurve) -> Iterator[dict[str, Any]]:
        """Yield one chunk per window: `(1, W)` float32 ``magnitudes``/``times``, int64 ``attention_mask``."""
        if not isinstance(item, _NumberedCurve):  # called directly on a raw curve
            item = _NumberedCurve(0, item)
        try:
            features = self.feature_extractor(
                [item.curve], ids=[item.curve_id], return_tensors="pt", return_cleaning_report=True
            )
        except LightCurveValidationError as error:
            raise _renumber(error, item) from error
        n_windows = int(features["magnitudes"].shape[0])
        n_observations = int(features["n_observations"][0])
        for w in range(n_windows):
            yield {
                "magnitudes": features["magnitudes"][w : w + 1],
                "times": features["times"][w : w + 1],
                "attention_mask": features["attention_mask"][w : w + 1],
                "n_observations": n_observations,
                "is_last": w == n_windows - 1,
            }

    def _encoder_and_layer_logits(self) -> tuple[Any, torch.Tensor | None]:
        """The base encoder (heads keep it as ``.astromer``) and a fine-tuned gamma, when the model has one."""
        encoder = getattr(self.model, "astromer", self.model)
        layer_logits = getattr(self.model, "layer_logits", None)
        return encoder, layer_logits

    def _forward(self, model_inputs: dict[str, Any], pooling: str = "skip") -> dict[str, Any]:
        encoder, layer_logits = self._encoder_and_layer_logits()
        embeddings = encoder.embed(
            model_inputs["magnitudes"],
            model_inputs["times"],
            model_inputs["attention_mask"],
            pooling=pooling,
            layer_logits=layer_logits if pooling == "skip" else None,
        )
        # the tensor must come first: the batch unroller reads the batch size from the first key
        return {
            "window_embedding": embeddings,
            "n_observations": model_inputs["n_observations"],
            "is_last": model_inputs["is_last"],
        }

    def postprocess(
        self, window_outputs: list[dict[str, Any]], return_tensors: str = "np", return_details: bool = False
    ) -> Any:
        """Average the window vectors of one curve (accumulated in float64) into one `(hidden_size,)` vector, in the
        model's dtype (as float32 for NumPy output when that dtype is bfloat16)."""
        windows = torch.cat([out["window_embedding"] for out in window_outputs], dim=0)  # (n_windows, D)
        vector = windows.to(torch.float64).mean(dim=0).to(windows.dtype)
        if return_tensors == "pt":
            embedding: Any = vector
        else:  # NumPy has no bfloat16 (a bf16 model, or bf16 autocast): widen to float32, which is exact
            embedding = (vector.float() if vector.dtype == torch.bfloat16 else vector).numpy()
        if not return_details:
            return embedding
        n_observations = window_outputs[0]["n_observations"]
        if isinstance(n_observations, (list, tuple)):
            n_observations = n_observations[0]
        return {
            "embedding": embedding,
            "n_windows": int(windows.shape[0]),
            "n_observations": int(n_observations),
        }
