"""Convert an official TensorFlow Astromer checkpoint (A1 or A2) into a Hugging Face ``save_pretrained`` folder.

The TF checkpoint is read without TensorFlow (:mod:`astromer_app.tf_checkpoint`). Variables are matched by
key *suffix* and shape (the leading ``layer_with_weights-K`` index shifts between pretraining and fine-tuned
classifier graphs), the architecture is derived from the checkpoint itself (number of blocks, FFN width, projected
residuals, MASK token), and every variable must find exactly one place in
:class:`~modeling_astromer.modeling_astromer.AstromerForMaskedReconstruction`: a missing or unused variable is an
error and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import numpy as np
import torch
from safetensors.torch import load_file

from hub_datasets.atomic import staging_folder
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerForMaskedReconstruction
from modeling_astromer.errors import AstromerError

from .tf_checkpoint import TFCheckpoint, read_tf_checkpoint

__all__ = ["CheckpointConversionError", "convert_tf_checkpoint", "tf_state_dict"]

Variant = Literal["astromer1", "astromer2"]
VARIANTS: tuple[str, ...] = ("astromer1", "astromer2")

# Keras sub-layer of one encoder block -> (our sub-module, layer kind). "dense": kernel [in,out] -> weight.T,
# bias -> bias; "norm": gamma -> weight, beta -> bias.
_BLOCK_LAYERS: dict[str, tuple[str, str]] = {
    "mha/wq": ("attention.q_proj", "dense"),
    "mha/wk": ("attention.k_proj", "dense"),
    "mha/wv": ("attention.v_proj", "dense"),
    "mha/dense": ("attention.o_proj", "dense"),
    "reshape_leak_1": ("attention_residual", "dense"),
    "layernorm1": ("attention_norm", "norm"),
    "ffn/layer_with_weights-0": ("ffn.fc_in", "dense"),
    "ffn/layer_with_weights-1": ("ffn.fc_out", "dense"),
    "reshape_leak_2": ("ffn_residual", "dense"),
    "layernorm2": ("output_norm", "norm"),
}
_PARAM_NAMES: dict[str, dict[str, str]] = {
    "dense": {"kernel": "weight", "bias": "bias"},
    "norm": {"gamma": "weight", "beta": "bias"},
}
_BLOCK_KEY = re.compile(
    r"^(?P<root>(?:.+/)?)enc_layers/(?P<block>\d+)/(?P<layer>"
    + "|".join(re.escape(name) for name in _BLOCK_LAYERS)
    + r")/(?P<param>kernel|bias|gamma|beta)$"
)
_EMBEDDING_KEY = re.compile(r"^(?:.+/)?inp_transform/(?P<param>kernel|bias)$")
# Fine-tuned classifier graphs call `encoder.input_format` first, so the embedding Dense is a top-level child.
_TOP_LEVEL_DENSE_KEY = re.compile(r"^layer_with_weights-\d+/(?P<param>kernel|bias)$")
_HEAD_KEYS: dict[re.Pattern[str], tuple[str, str]] = {
    re.compile(r"^(?:.+/)?bn_0/(?P<param>gamma|beta)$"): ("reconstruction_head.norm", "norm"),
    re.compile(r"^(?:.+/)?reg_layer/(?P<param>kernel|bias)$"): ("reconstruction_head.proj", "dense"),
}
_MASK_TOKEN_KEY = re.compile(r"^(?:.+/)?msk_token$")
_BOOKKEEPING_KEYS = frozenset({"save_counter"})  # tf.train.Checkpoint counter, not a model weight
_RESIDUAL_LAYERS = ("reshape_leak_1", "reshape_leak_2")
#: The official training configurations stored next to the weights: Astromer 2's, then Astromer 1's.
SIDECAR_FILES: tuple[str, ...] = ("config.toml", "conf.json")


class CheckpointConversionError(AstromerError, ValueError):
    """A TF checkpoint cannot be converted: unknown, missing, unused or mis-shaped variables, or a bad target."""


@dataclass
class _Match:
    """Where each recognised TF variable goes; built by :func:`_match_variables`."""

    targets: dict[str, tuple[str, bool]] = field(default_factory=dict)  # our key -> (TF key, transpose)
    unused: list[str] = field(default_factory=list)
    encoder_roots: set[str] = field(default_factory=set)
    block_ids: set[int] = field(default_factory=set)
    has_residual_projection: bool = False
    mask_token_key: str | None = None


def _dense_or_norm_target(module: str, kind: str, param: str) -> tuple[str, bool] | None:
    """Our parameter name for a Keras ``kernel``/``bias``/``gamma``/``beta`` of a dense or norm layer."""
    name = _PARAM_NAMES[kind].get(param)
    if name is None:
        return None
    return f"{module}.{name}", kind == "dense" and param == "kernel"


def _match_variables(variables: dict[str, np.ndarray]) -> _Match:
    """Assign every TF variable to one parameter of ``AstromerForMaskedReconstruction`` (or to ``unused``)."""
    match = _Match()
    claimed: dict[str, list[str]] = {}

    def claim(target: tuple[str, bool] | None, key: str) -> None:
        if target is None:
            match.unused.append(key)
            return
        claimed.setdefault(target[0], []).append(key)
        match.targets[target[0]] = (key, target[1])

    has_inp_transform = any(_EMBEDDING_KEY.match(key) for key in variables)
    for key in sorted(variables):
        if key in _BOOKKEEPING_KEYS:
            continue
        if block := _BLOCK_KEY.match(key):
            module, kind = _BLOCK_LAYERS[block["layer"]]
            match.encoder_roots.add(block["root"])
            match.block_ids.add(int(block["block"]))
            match.has_residual_projection |= block["layer"] in _RESIDUAL_LAYERS
            target = _dense_or_norm_target(
                f"astromer.layers.{int(block['block'])}.{module}", kind, block["param"]
            )
            claim(target, key)
        elif embedding := _EMBEDDING_KEY.match(key):
            claim(
                _dense_or_norm_target("astromer.embeddings.magnitude_proj", "dense", embedding["param"]), key
            )
        elif (
            (top := _TOP_LEVEL_DENSE_KEY.match(key))
            and not has_inp_transform
            and _is_embedding_dense(key, variables)
        ):
            claim(_dense_or_norm_target("astromer.embeddings.magnitude_proj", "dense", top["param"]), key)
        elif _MASK_TOKEN_KEY.match(key):
            match.mask_token_key = key
            claim(("astromer.embeddings.mask_token", False), key)
        else:
            for pattern, (module, kind) in _HEAD_KEYS.items():
                if head := pattern.match(key):
                    claim(_dense_or_norm_target(module, kind, head["param"]), key)
                    break
            else:
                match.unused.append(key)

    ambiguous = {target: keys for target, keys in claimed.items() if len(keys) > 1}
    if ambiguous:
        lines = "\n".join(f"  {target} <- {', '.join(keys)}" for target, keys in sorted(ambiguous.items()))
        raise CheckpointConversionError(f"several checkpoint variables match the same parameter:\n{lines}")
    if len(match.encoder_roots) > 1:
        raise CheckpointConversionError(
            f"the checkpoint holds more than one encoder (enc_layers under {sorted(match.encoder_roots)}); "
            "expected a single Astromer encoder"
        )
    return match


def _is_embedding_dense(key: str, variables: dict[str, np.ndarray]) -> bool:
    """A top-level ``layer_with_weights-K`` Dense is the input embedding when its kernel is ``[1, d]``."""
    kernel = variables.get(key.rsplit("/", 1)[0] + "/kernel")
    return kernel is not None and kernel.ndim == 2 and kernel.shape[0] == 1


def _read_sidecar_config(checkpoint_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """Read the official training configuration stored next to the weights, if any.

    Returns ``(kind, settings)``: kind is ``"astromer2"`` for main-code's ``config.toml``, ``"astromer1"`` for the
    A1 library's ``conf.json``, ``None`` when neither exists. ``settings`` holds the fields a checkpoint cannot
    reveal (heads, dropout, window size, masking fractions) plus the structural ones used for a cross-check.
    """
    toml_path, json_path = (checkpoint_dir / name for name in SIDECAR_FILES)
    try:
        if toml_path.is_file():
            raw = tomllib.loads(toml_path.read_text())
            settings = {
                "num_attention_heads": raw.get("num_heads"),
                "hidden_dropout_prob": raw.get("dropout"),
                "window_size": raw.get("window_size"),
                "probed_fraction": raw.get("probed"),
                "random_fraction": raw.get("rs"),
                "same_fraction": raw.get("same"),
                "_layers": raw.get("num_layers"),
                "_ffn": raw.get("mixer"),
                "_leak": raw.get("use_leak"),
                "_file": toml_path,
            }
            if raw.get("mask_format", "K") != "K":
                raise CheckpointConversionError(
                    f"{toml_path}: mask_format={raw['mask_format']!r} is not supported; the released Astromer 2 "
                    "uses key masking ('K')"
                )
            if raw.get("m_alpha") is not None:
                settings["mask_bias"] = float(raw["m_alpha"])
            return "astromer2", settings
        if json_path.is_file():
            raw = json.loads(json_path.read_text())
            settings = {
                "num_attention_heads": raw.get("heads"),
                "hidden_dropout_prob": raw.get("dropout"),
                "window_size": raw.get("max_obs"),
                "probed_fraction": raw.get("msk_frac"),
                "random_fraction": raw.get("rnd_frac"),
                "same_fraction": raw.get("same_frac"),
                "_layers": raw.get("layers"),
                "_ffn": raw.get("dff"),
                "_leak": raw.get("use_leak"),
                "_file": json_path,
            }
            return "astromer1", settings
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise CheckpointConversionError(
            f"cannot parse the training configuration next to the weights: {err}"
        ) from err
    return None, {}


def _detect_variant(match: _Match, sidecar_kind: str | None, sidecar: dict[str, Any]) -> tuple[str, str]:
    """``(variant, the evidence)``: only Astromer 2 blocks have projected residuals, and the official training
    configuration stored next to the weights names its code base (``config.toml``: Astromer 2, ``conf.json``:
    Astromer 1)."""
    if match.has_residual_projection:
        return "astromer2", "its encoder blocks have projected residuals (reshape_leak_1/2)"
    if sidecar_kind is not None:
        return sidecar_kind, f"its training configuration {sidecar['_file'].name} belongs to {sidecar_kind}"
    return "astromer1", "its encoder blocks have no projected residuals and no Astromer 2 config.toml lies beside it"


def _build_config(checkpoint: TFCheckpoint, match: _Match, variant: str | None) -> AstromerConfig:
    """Derive the architecture from the checkpoint, on top of the chosen preset."""
    variables = checkpoint.variables
    embedding = match.targets.get("astromer.embeddings.magnitude_proj.weight")
    fc_in = match.targets.get("astromer.layers.0.ffn.fc_in.weight")
    if embedding is None or fc_in is None or not match.block_ids:
        found = ", ".join(sorted(variables)[:8]) + (" ..." if len(variables) > 8 else "")
        raise CheckpointConversionError(
            f"{checkpoint.prefix}: not an Astromer checkpoint, or an incomplete one: no "
            f"{'input embedding (inp_transform)' if embedding is None else 'encoder block 0 (enc_layers/0/ffn)'} "
            f"among its {len(variables)} variables ({found})"
        )
    hidden_size = int(variables[embedding[0]].shape[1])
    intermediate_size = int(variables[fc_in[0]].shape[1])
    num_layers = max(match.block_ids) + 1

    sidecar_kind, sidecar = _read_sidecar_config(checkpoint.prefix.parent)
    detected = _detect_variant(match, sidecar_kind, sidecar)
    if variant is None:
        variant = detected[0]
    elif variant != detected[0]:
        raise CheckpointConversionError(
            f"{checkpoint.prefix}: variant {variant!r} contradicts the checkpoint, which is {detected[0]}: "
            f"{detected[1]}; leave the variant out to use the detected one"
        )
    if sidecar:
        expected = {"_layers": num_layers, "_ffn": intermediate_size, "_leak": match.has_residual_projection}
        wrong = [
            f"{name[1:]}={sidecar[name]!r} (checkpoint: {value!r})"
            for name, value in expected.items()
            if sidecar.get(name) is not None and sidecar[name] != value
        ]
        if wrong:
            raise CheckpointConversionError(
                f"{sidecar['_file']} does not describe these weights: {', '.join(wrong)}; move it away to convert "
                "from the checkpoint alone"
            )
    overrides: dict[str, Any] = {
        key: value for key, value in sidecar.items() if not key.startswith("_") and value is not None
    }
    overrides.update(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        intermediate_size=intermediate_size,
        use_residual_projection=match.has_residual_projection,
        use_mask_token=match.mask_token_key is not None,
        conversion_source={
            "format": "tensorflow-checkpoint",
            "checkpoint": checkpoint.prefix.name,
            "folder": checkpoint.prefix.parent.name,
            "variant": variant,
            "training_config": sidecar["_file"].name if sidecar else None,
            **{f"optimizer_{name}": value.item() for name, value in sorted(checkpoint.optimizer.items())},
        },
    )
    preset = AstromerConfig.astromer2 if variant == "astromer2" else AstromerConfig.astromer1
    try:
        return preset(**overrides)
    except Exception as err:  # huggingface_hub's strict validation errors are not ValueErrors
        raise CheckpointConversionError(
            f"the checkpoint implies an invalid {variant} configuration: {err}"
        ) from err


def tf_state_dict(
    checkpoint: TFCheckpoint, variant: str | None = None
) -> tuple[AstromerConfig, dict[str, torch.Tensor]]:
    """Map a TF Astromer checkpoint onto ``AstromerForMaskedReconstruction`` parameter names.

    Args:
        checkpoint: the output of :func:`~astromer_app.tf_checkpoint.read_tf_checkpoint`.
        variant: ``"astromer1"``, ``"astromer2"`` or ``None`` to detect it (projected residuals or an A2
            ``config.toml`` next to the weights => Astromer 2).

    Returns:
        ``(config, state_dict)``; Dense kernels ``[in, out]`` become contiguous float32 ``weight = kernel.T``
        ``[out, in]``, LayerNorm ``gamma``/``beta`` become ``weight``/``bias``, ``msk_token`` becomes a 0-d tensor.
        Completeness against the model is checked by :func:`convert_tf_checkpoint`, not here.

    Raises:
        CheckpointConversionError: a variable that matches no parameter, several matching the same one, a
            non-float tensor, or an inconsistent ``config.toml``/``conf.json`` next to the weights.
    """
    config, state, unused = _map_checkpoint(checkpoint, variant)
    if unused:
        raise CheckpointConversionError(
            f"{checkpoint.prefix}: cannot convert.\n{_describe_unused(checkpoint, unused)}"
        )
    return config, state


def _map_checkpoint(
    checkpoint: TFCheckpoint, variant: str | None
) -> tuple[AstromerConfig, dict[str, torch.Tensor], list[str]]:
    """:func:`tf_state_dict` without the unused-variable check; also returns the unused TF keys."""
    if variant is not None and variant not in VARIANTS:
        raise CheckpointConversionError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    match = _match_variables(checkpoint.variables)
    config = _build_config(checkpoint, match, variant)
    state: dict[str, torch.Tensor] = {}
    for target, (key, transpose) in match.targets.items():
        array = checkpoint.variables[key]
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointConversionError(
                f"checkpoint variable {key!r} has dtype {array.dtype}, expected a float"
            )
        array = array.T if transpose else array
        if target == "astromer.embeddings.mask_token":
            if array.size != 1:
                raise CheckpointConversionError(
                    f"{key!r} has shape {list(array.shape)}; a MASK token is one scalar"
                )
            array = array.reshape(())
        state[target] = torch.from_numpy(
            np.array(array, dtype=np.float32, order="C")
        )  # ascontiguousarray makes 0-d 1-d
    return config, state, match.unused


def _describe_unused(checkpoint: TFCheckpoint, unused: list[str]) -> str:
    listed = "\n".join(f"  {key} {list(checkpoint.variables[key].shape)}" for key in unused)
    hint = ""
    if any(key.startswith("layer_with_weights-1/enc_layers/") for key in checkpoint.variables):
        hint = (
            "\nThis looks like a fine-tuned classifier checkpoint (encoder under layer_with_weights-1): only "
            "pretraining (masked reconstruction) checkpoints can be converted; the classification head has no "
            "counterpart in AstromerForMaskedReconstruction."
        )
    return (
        f"{len(unused)} checkpoint variable(s) match no parameter of AstromerForMaskedReconstruction:\n"
        f"{listed}{hint}"
    )


def _check_against_model(
    model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: TFCheckpoint, unused: list[str]
) -> dict[str, Any]:
    """Compare the mapped tensors with the model's own state dict; returns the complete state dict to load."""
    expected = model.state_dict()
    parameter_names = {name for name, _ in model.named_parameters()}
    missing = sorted(name for name in parameter_names if name not in state)
    extra = sorted(name for name in state if name not in expected)
    wrong_shape = [
        f"  {name}: checkpoint {list(tensor.shape)}, model {list(expected[name].shape)}"
        for name, tensor in sorted(state.items())
        if name in expected and tensor.shape != expected[name].shape
    ]
    problems = [_describe_unused(checkpoint, unused)] if unused else []
    if missing:
        problems.append(
            f"{len(missing)} model parameter(s) missing from the checkpoint:\n"
            + "\n".join(f"  {n}" for n in missing)
        )
    if extra:
        problems.append("not in the model:\n" + "\n".join(f"  {name}" for name in extra))
    if wrong_shape:
        problems.append("shape mismatch:\n" + "\n".join(wrong_shape))
    if problems:
        raise CheckpointConversionError(
            f"{checkpoint.prefix}: cannot convert, nothing written.\n" + "\n".join(problems)
        )
    complete = dict(expected)  # non-parameter buffers keep the model's own values
    complete.update(state)
    return complete


def _prepare_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise CheckpointConversionError(f"destination {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointConversionError(
            f"destination {dst} exists and is not empty; pass overwrite=True to replace it"
        )


#: What a converted folder can record about where its weights came from (``config.conversion_source``), beside
#: what the converter finds itself (checkpoint and folder names, variant, training configuration, file checksums).
PROVENANCE_FIELDS: tuple[str, ...] = (
    "repository", "commit", "archive", "archive_sha256", "training_data", "license", "citation"
)


def _file_digests(checkpoint: TFCheckpoint) -> dict[str, str]:
    """SHA-256 of the checkpoint's index, data shards and training configuration, by file name."""
    folder, prefix = checkpoint.prefix.parent, checkpoint.prefix.name
    names = [p for p in sorted(folder.iterdir()) if p.name.startswith(f"{prefix}.") or p.name in SIDECAR_FILES]
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in names if path.is_file()}


def convert_tf_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    variant: Variant | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, str] | None = None,
) -> Path:
    """Convert a TensorFlow Astromer checkpoint into a ``from_pretrained`` folder.

    Args:
        src: checkpoint folder (with a ``checkpoint`` file), prefix (``<dir>/weights``) or ``.index`` file.
        dst: output folder; receives ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``.
        variant: ``"astromer1"`` (A1 attention bias, no residuals), ``"astromer2"`` (key masking) or ``None`` to
            detect it. The architecture sizes always come from the checkpoint.
        overwrite: replace a non-empty ``dst``; the old folder is swapped out only once the new one is complete.
        provenance: where the checkpoint came from, recorded in ``config.conversion_source`` for model cards (keys
            of :data:`PROVENANCE_FIELDS`: source repository, commit, archive name and checksum, training data,
            licence identifier, citation). A ``LICENSE`` file next to the checkpoint is copied into ``dst``.

    Returns:
        The output folder.

    Raises:
        TFCheckpointError: unreadable or corrupted checkpoint files.
        CheckpointConversionError: missing, unused, ambiguous or mis-shaped variables, or a non-empty ``dst``
            without ``overwrite``. In every error case nothing is written at ``dst``.
    """
    dst = Path(dst).expanduser()
    unknown = sorted(set(provenance or {}) - set(PROVENANCE_FIELDS))
    if unknown:
        raise CheckpointConversionError(f"unknown provenance field(s) {unknown}; known: {list(PROVENANCE_FIELDS)}")
    _prepare_destination(dst, overwrite)
    checkpoint = read_tf_checkpoint(src)
    config, state, unused = _map_checkpoint(checkpoint, variant)
    config.conversion_source = {
        **config.conversion_source,
        **{key: value for key, value in (provenance or {}).items() if value},
        "files": _file_digests(checkpoint),
    }
    license_file = checkpoint.prefix.parent / "LICENSE"
    model = AstromerForMaskedReconstruction(config)
    complete = _check_against_model(model, state, checkpoint, unused)
    model.load_state_dict(complete, strict=True)

    with staging_folder(dst) as staging:
        model.save_pretrained(staging)
        AstromerFeatureExtractor(window_size=config.window_size).save_pretrained(staging)
        if license_file.is_file():
            shutil.copyfile(license_file, staging / "LICENSE")
        _verify_saved_weights(staging, state)
        _prepare_destination(dst, overwrite)  # re-check: something may have appeared meanwhile
    return dst


def _verify_saved_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Re-read ``model.safetensors`` and require every converted tensor to be stored bit for bit."""
    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise CheckpointConversionError(f"save_pretrained wrote no {weights_path.name} in {folder}")
    saved = load_file(weights_path)
    bad = [
        name for name, tensor in state.items() if name not in saved or not torch.equal(saved[name], tensor)
    ]
    if bad:
        raise CheckpointConversionError(
            f"{weights_path}: tensors not stored exactly: {', '.join(sorted(bad))}"
        )

