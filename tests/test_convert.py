"""Tests of the TensorFlow checkpoint reader and the TF -> Hugging Face converter.

The reader is exercised on checkpoints written here by a small, independent bundle writer (so it is tested on
machines without ``../shared``) and on the two reference checkpoints (released A1 weights, seeded A2).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch

from astromer_app.cli import main as cli_main
from astromer_app.convert import CheckpointConversionError, convert_tf_checkpoint, tf_state_dict
from astromer_app.tf_checkpoint import TFCheckpointError, read_tf_checkpoint
from modeling_astromer import bundled_model_path

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
TF_DTYPES = {
    np.dtype("float32"): 1,
    np.dtype("float64"): 2,
    np.dtype("int32"): 3,
    np.dtype("int64"): 9,
    np.dtype("bool"): 10,
    np.dtype("float16"): 19,
}
MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)


# ------------------------------------------------------------------------------------- a tiny bundle writer


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""  # proto3 omits defaults


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _field_fixed32(number: int, value: int) -> bytes:
    return _varint((number << 3) | 5) + struct.pack("<I", value)


def _mask(crc: int) -> int:
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    return _mask(google_crc32c.value(data))


def _shape_proto(shape: tuple[int, ...]) -> bytes:
    return b"".join(_field_bytes(2, _field_varint(1, dim)) for dim in shape)


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    body, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(body))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(body) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def write_bundle(
    prefix: Path,
    tensors: dict[str, np.ndarray],
    *,
    num_shards: int = 1,
    string_keys: tuple[str, ...] = ("_CHECKPOINTABLE_OBJECT_GRAPH",),
    entries_per_block: int = 7,
    restart_interval: int = 3,
    compression: int = 0,
    extra_entry_fields: dict[str, bytes] | None = None,
) -> None:
    """Write ``tensors`` (full checkpoint keys) as a TF bundle: ``<prefix>.index`` + data shards."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    shards = [bytearray() for _ in range(num_shards)]
    entries: dict[bytes, bytes] = {b"": _field_varint(1, num_shards) + _field_bytes(3, _field_varint(1, 1))}
    for i, (key, array) in enumerate(sorted(tensors.items())):
        shard_id = i % num_shards
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        proto = (
            _field_varint(1, TF_DTYPES[array.dtype])
            + _field_bytes(2, _shape_proto(array.shape))
            + _field_varint(3, shard_id)
            + _field_varint(4, len(shards[shard_id]))
            + _field_varint(5, len(raw))
            + _field_fixed32(6, _masked_crc(raw))
            + (extra_entry_fields or {}).get(key, b"")
        )
        shards[shard_id] += raw
        entries[key.encode()] = proto
    for key in string_keys:  # DT_STRING tensors: the reader must skip them without decoding
        payload = b"\x05hello"
        entries[key.encode()] = (
            _field_varint(1, 7) + _field_varint(3, 0) + _field_varint(4, len(shards[0])) + _field_varint(5, 6)
        )
        shards[0] += payload
    items = sorted(entries.items())

    table = bytearray()

    def append_block(contents: bytes) -> bytes:
        handle = _varint(len(table)) + _varint(len(contents))
        trailer_type = bytes([compression])
        table.extend(contents + trailer_type + struct.pack("<I", _masked_crc(contents + trailer_type)))
        return handle

    index_entries = []
    for start in range(0, len(items), entries_per_block):
        chunk = items[start : start + entries_per_block]
        handle = append_block(_block(chunk, restart_interval))
        index_entries.append((chunk[-1][0], handle))
    metaindex_handle = append_block(_block([], restart_interval))
    index_handle = append_block(_block(index_entries, 1))
    footer = (metaindex_handle + index_handle).ljust(40, b"\0") + MAGIC
    Path(f"{prefix}.index").write_bytes(bytes(table) + footer)
    for shard_id, data in enumerate(shards):
        Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}").write_bytes(bytes(data))
    (prefix.parent / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n'
    )


def tiny_astromer_variables(
    rng: np.random.Generator,
    *,
    hidden: int = 16,
    ffn: int = 24,
    blocks: int = 2,
    leak: bool = True,
    encoder_root: str = "layer_with_weights-0/",
    embedding_root: str = "layer_with_weights-0/inp_transform/",
    head_root: str = "layer_with_weights-1/",
) -> dict[str, np.ndarray]:
    """Random float32 variables named like an official Astromer checkpoint (stripped keys)."""

    def dense(n_in: int, n_out: int, name: str) -> dict[str, np.ndarray]:
        return {
            f"{name}kernel": rng.standard_normal((n_in, n_out)).astype(np.float32),
            f"{name}bias": rng.standard_normal(n_out).astype(np.float32),
        }

    def norm(name: str) -> dict[str, np.ndarray]:
        return {
            f"{name}gamma": rng.standard_normal(hidden).astype(np.float32),
            f"{name}beta": rng.standard_normal(hidden).astype(np.float32),
        }

    variables = dense(1, hidden, embedding_root)
    for k in range(blocks):
        block = f"{encoder_root}enc_layers/{k}/"
        for proj in ("wq", "wk", "wv", "dense"):
            variables |= dense(hidden, hidden, f"{block}mha/{proj}/")
        variables |= dense(hidden, ffn, f"{block}ffn/layer_with_weights-0/")
        variables |= dense(ffn, hidden, f"{block}ffn/layer_with_weights-1/")
        variables |= norm(f"{block}layernorm1/") | norm(f"{block}layernorm2/")
        if leak:
            variables |= dense(hidden, hidden, f"{block}reshape_leak_1/") | dense(
                hidden, hidden, f"{block}reshape_leak_2/"
            )
    variables |= norm(f"{head_root}bn_0/") | dense(hidden, 1, f"{head_root}reg_layer/")
    return variables


def write_variables(prefix: Path, variables: dict[str, np.ndarray], **kwargs) -> None:
    write_bundle(prefix, {key + SUFFIX: value for key, value in variables.items()}, **kwargs)


# ------------------------------------------------------------------------------------- reader, synthetic


def test_reader_round_trips_a_synthetic_bundle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "net/a/kernel": rng.standard_normal((3, 5)).astype(np.float32),
        "net/a/bias": rng.standard_normal(5).astype(np.float32),
        "net/b/table": rng.standard_normal((2, 3, 4)).astype(np.float64),
        "net/c/counts": rng.integers(-(2**40), 2**40, size=7).astype(np.int64),
        "net/c/ids": rng.integers(-1000, 1000, size=(2, 2)).astype(np.int32),
        "net/d/flags": rng.random(9) > 0.5,
        "net/e/half": rng.standard_normal(6).astype(np.float16),
        "net/f/scalar": np.array(2.5, dtype=np.float32),
        "net/g/empty": np.zeros((0, 4), dtype=np.float32),
    }
    full = {key + SUFFIX: value for key, value in tensors.items()}
    full["net/a/kernel/.OPTIMIZER_SLOT/optimizer/m" + SUFFIX] = np.ones((3, 5), np.float32)
    full["optimizer/learning_rate" + SUFFIX] = np.array(1e-5, np.float32)
    full["optimizer/iter" + SUFFIX] = np.array(31040, np.int64)
    full["optimizer/_velocities/0" + SUFFIX] = np.ones((3, 5), np.float32)
    write_bundle(tmp_path / "ckpt" / "weights", full, num_shards=2, entries_per_block=3, restart_interval=2)

    checkpoint = read_tf_checkpoint(tmp_path / "ckpt")
    assert checkpoint.prefix == tmp_path / "ckpt" / "weights"
    assert set(checkpoint.variables) == set(tensors)
    for key, expected in tensors.items():
        got = checkpoint.variables[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected, err_msg=key)
    assert set(checkpoint.optimizer) == {"learning_rate", "iter"}
    assert checkpoint.optimizer["learning_rate"] == np.float32(1e-5)
    assert checkpoint.optimizer["iter"] == 31040
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in checkpoint.skipped_keys
    assert sum(".OPTIMIZER_SLOT/" in key for key in checkpoint.skipped_keys) == 1
    # prefix path and .index path name the same checkpoint
    for spelling in (tmp_path / "ckpt" / "weights", tmp_path / "ckpt" / "weights.index"):
        again = read_tf_checkpoint(spelling)
        np.testing.assert_array_equal(again.variables["net/b/table"], tensors["net/b/table"])


def test_reader_widens_bfloat16(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # these values are exact in bfloat16
    raw = bits.tobytes()
    prefix = tmp_path / "weights"
    entry = (
        _field_varint(1, 14)
        + _field_bytes(2, _shape_proto((4,)))
        + _field_varint(5, len(raw))
        + _field_fixed32(6, _masked_crc(raw))
    )
    table = bytearray()
    blocks = [_block([(b"", _field_varint(1, 1)), (("x" + SUFFIX).encode(), entry)], 16), _block([], 16)]
    handles = []
    for contents in blocks:
        handles.append(_varint(len(table)) + _varint(len(contents)))
        table += contents + b"\0" + struct.pack("<I", _masked_crc(contents + b"\0"))
    index = _block([(("x" + SUFFIX).encode(), handles[0])], 1)
    index_handle = _varint(len(table)) + _varint(len(index))
    table += index + b"\0" + struct.pack("<I", _masked_crc(index + b"\0"))
    Path(f"{prefix}.index").write_bytes(bytes(table) + (handles[1] + index_handle).ljust(40, b"\0") + MAGIC)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(raw)
    got = read_tf_checkpoint(prefix).variables["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("slices", "partitioned"),
        ("size", "declares"),
        ("compression", "compression type 1"),
        ("block_crc", "CRC mismatch in data block"),
        ("no_state_file", "no 'checkpoint' file and 2"),
    ],
)
def test_reader_rejects_malformed_synthetic_bundles(tmp_path: Path, mutate: str, message: str) -> None:
    key = "net/w" + SUFFIX
    tensors = {key: np.arange(6, dtype=np.float32).reshape(2, 3)}
    prefix = tmp_path / "weights"
    if mutate == "slices":
        write_bundle(prefix, tensors, extra_entry_fields={key: _field_bytes(7, b"\x0a\x00")})
    elif mutate == "size":
        write_bundle(prefix, tensors, extra_entry_fields={key: _field_varint(5, 20)})  # later field wins
    elif mutate == "compression":
        write_bundle(prefix, tensors, compression=1)
    else:
        write_bundle(prefix, tensors)
    if mutate == "block_crc":
        index = bytearray(Path(f"{prefix}.index").read_bytes())
        index[index.find(b"net/w") + 1] ^= 0x01
        Path(f"{prefix}.index").write_bytes(bytes(index))
    target: Path = prefix
    if mutate == "no_state_file":
        (tmp_path / "checkpoint").unlink()
        write_bundle(tmp_path / "other", tensors)
        (tmp_path / "checkpoint").unlink()
        target = tmp_path
    with pytest.raises(TFCheckpointError, match=message):
        read_tf_checkpoint(target)


def test_reader_errors_name_file_and_problem(tmp_path: Path) -> None:
    with pytest.raises(TFCheckpointError, match=r"nowhere\.index: checkpoint index file not found"):
        read_tf_checkpoint(tmp_path / "nowhere")
    (tmp_path / "junk.index").write_bytes(b"\0" * 20)
    with pytest.raises(TFCheckpointError, match="shorter than the 48-byte table footer"):
        read_tf_checkpoint(tmp_path / "junk")
    assert issubclass(TFCheckpointError, ValueError)


# ------------------------------------------------------------------------------------- reader, reference checkpoints


@pytest.fixture(scope="module")
def a1_dir(reference_dir: Path) -> Path:
    return reference_dir / "astromer1_macho_a0"


@pytest.fixture(scope="module")
def a2_dir(reference_dir: Path) -> Path:
    return reference_dir / "astromer2_tf_random"


def test_reference_a1_checkpoint(a1_dir: Path, reference_dir: Path) -> None:
    checkpoint = read_tf_checkpoint(a1_dir)
    assert len(checkpoint.variables) == 38
    assert sum(v.size for v in checkpoint.variables.values()) == 661_505  # the released A1 parameter count, checked on the checkpoint
    assert checkpoint.optimizer == {}
    assert all(v.dtype == np.float32 for v in checkpoint.variables.values())
    assert checkpoint.variables[
        "layer_with_weights-0/enc_layers/1/ffn/layer_with_weights-0/kernel"
    ].shape == (256, 128)
    assert checkpoint.variables["layer_with_weights-1/reg_layer/kernel"].shape == (256, 1)

    # Independent route 1: the A1 inp_transform/kernel entry has no offset field, so it is the first 1 KiB of the shard.
    shard = (a1_dir / "weights.data-00000-of-00001").read_bytes()
    kernel = checkpoint.variables["layer_with_weights-0/inp_transform/kernel"]
    np.testing.assert_array_equal(kernel, np.frombuffer(shard[:1024], dtype="<f4").reshape(1, 256))

    # Independent route 2: TF's own embedding minus the time encoding is Dense(magnitude) = m * kernel + bias.
    ref = np.load(reference_dir / "astromer1_macho_a0.npz")
    rows = ref["full_rows"]
    dense_out = (ref["full_input_embedding"] - ref["pe"]).astype(np.float64)  # [2, 200, 256]
    magnitudes = ref["input"][rows].astype(np.float64)[..., None]
    bias = checkpoint.variables["layer_with_weights-0/inp_transform/bias"].astype(np.float64)
    predicted = magnitudes * kernel[0].astype(np.float64) + bias
    assert np.abs(predicted - dense_out).max() < 2e-6  # float32 rounding of TF's sum and difference


def test_reference_a2_checkpoint(a2_dir: Path, reference_dir: Path) -> None:
    checkpoint = read_tf_checkpoint(a2_dir)
    shapes = json.loads((a2_dir / "variable_map.json").read_text())["ckpt_shapes"]
    expected = {key.removesuffix(SUFFIX): tuple(shape) for key, shape in shapes.items()}
    assert len(checkpoint.variables) == 126 == len(expected)
    assert {key: value.shape for key, value in checkpoint.variables.items()} == expected
    assert sum(v.size for v in checkpoint.variables.values()) == 3_953_409
    # Independent route: the Adam-step reference stores TF's own values of six variables before the step.
    ref = np.load(reference_dir / "astromer2_tf_random.npz")
    for i, key in enumerate(ref["adam_watch_ckpt_keys"]):
        np.testing.assert_array_equal(
            checkpoint.variables[str(key).removesuffix(SUFFIX)], ref[f"adam_pre_{i}"]
        )


def _copy_checkpoint(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_flipped_data_byte_is_a_crc_error_naming_the_variable(a1_dir: Path, tmp_path: Path) -> None:
    copy = _copy_checkpoint(a1_dir, tmp_path)
    shard = copy / "weights.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x40  # inside inp_transform/kernel, which starts at offset 0
    shard.write_bytes(bytes(data))
    with pytest.raises(
        TFCheckpointError, match=r"CRC mismatch for variable 'layer_with_weights-0/inp_transform/kernel"
    ):
        read_tf_checkpoint(copy)


def test_truncated_index_missing_shard_bad_magic_truncated_data(a1_dir: Path, tmp_path: Path) -> None:
    copy = _copy_checkpoint(a1_dir, tmp_path)
    index = copy / "weights.index"
    original = index.read_bytes()

    index.write_bytes(original[: len(original) // 2])
    with pytest.raises(TFCheckpointError, match=r"weights\.index: bad table magic"):
        read_tf_checkpoint(copy)

    index.write_bytes(original[:-1] + b"\x00")
    with pytest.raises(TFCheckpointError, match="bad table magic"):
        read_tf_checkpoint(copy)

    index.write_bytes(original[:100] + original[-48:])  # footer intact, blocks gone
    with pytest.raises(TFCheckpointError, match="truncated or corrupted"):
        read_tf_checkpoint(copy)

    index.write_bytes(original)
    shard = copy / "weights.data-00000-of-00001"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(TFCheckpointError, match="truncated data: variable"):
        read_tf_checkpoint(copy)

    shard.unlink()
    with pytest.raises(TFCheckpointError, match=r"weights\.data-00000-of-00001: data shard not found"):
        read_tf_checkpoint(copy)


# ------------------------------------------------------------------------------------- conversion


def _assert_folder_matches(folder: Path, variables: dict[str, np.ndarray], mapping: dict[str, str]) -> None:
    """Every converted tensor equals its TF source exactly (kernels transposed)."""
    from modeling_astromer.modeling_astromer import AstromerForMaskedReconstruction

    model = AstromerForMaskedReconstruction.from_pretrained(folder)
    state = model.state_dict()
    assert set(state) == set(mapping)
    for ours, tf_key in mapping.items():
        source = variables[tf_key]
        expected = source.T if tf_key.endswith("kernel") else source.reshape(state[ours].shape)
        assert state[ours].dtype == torch.float32, ours
        np.testing.assert_array_equal(state[ours].numpy(), expected, err_msg=f"{ours} <- {tf_key}")


def _expected_mapping(variables: dict[str, np.ndarray], blocks: int, leak: bool) -> dict[str, str]:
    """The mapping table of the task, written out independently of the converter."""
    emb = next(k[: -len("kernel")] for k in variables if k.endswith("kernel") and variables[k].shape[0] == 1)
    enc = next(k.split("enc_layers/")[0] for k in variables if "enc_layers/" in k)
    head = next(k.split("bn_0/")[0] for k in variables if "bn_0/" in k)
    mapping = {
        "astromer.embeddings.magnitude_proj.weight": emb + "kernel",
        "astromer.embeddings.magnitude_proj.bias": emb + "bias",
        "reconstruction_head.norm.weight": head + "bn_0/gamma",
        "reconstruction_head.norm.bias": head + "bn_0/beta",
        "reconstruction_head.proj.weight": head + "reg_layer/kernel",
        "reconstruction_head.proj.bias": head + "reg_layer/bias",
    }
    dense = {
        "attention.q_proj": "mha/wq",
        "attention.k_proj": "mha/wk",
        "attention.v_proj": "mha/wv",
        "attention.o_proj": "mha/dense",
        "ffn.fc_in": "ffn/layer_with_weights-0",
        "ffn.fc_out": "ffn/layer_with_weights-1",
    }
    if leak:
        dense |= {"attention_residual": "reshape_leak_1", "ffn_residual": "reshape_leak_2"}
    for k in range(blocks):
        for ours, theirs in dense.items():
            mapping[f"astromer.layers.{k}.{ours}.weight"] = f"{enc}enc_layers/{k}/{theirs}/kernel"
            mapping[f"astromer.layers.{k}.{ours}.bias"] = f"{enc}enc_layers/{k}/{theirs}/bias"
        for ours, theirs in {"attention_norm": "layernorm1", "output_norm": "layernorm2"}.items():
            mapping[f"astromer.layers.{k}.{ours}.weight"] = f"{enc}enc_layers/{k}/{theirs}/gamma"
            mapping[f"astromer.layers.{k}.{ours}.bias"] = f"{enc}enc_layers/{k}/{theirs}/beta"
    return mapping


@pytest.mark.parametrize("leak", [True, False])
def test_convert_synthetic_checkpoint(tmp_path: Path, leak: bool) -> None:
    variables = tiny_astromer_variables(np.random.default_rng(1), blocks=3, leak=leak)
    write_variables(tmp_path / "tf" / "weights", variables)
    out = convert_tf_checkpoint(tmp_path / "tf", tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert (
        config["num_hidden_layers"] == 3 and config["hidden_size"] == 16 and config["intermediate_size"] == 24
    )
    assert config["use_residual_projection"] is leak and config["use_mask_token"] is False
    assert config["attention_bias_mode"] == ("key_mask" if leak else "a1_query_key_bias")
    assert config["conversion_source"]["variant"] == ("astromer2" if leak else "astromer1")
    assert config["conversion_source"]["checkpoint"] == "weights"
    _assert_folder_matches(out, variables, _expected_mapping(variables, 3, leak))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_convert_mask_token_and_classifier_layout(tmp_path: Path) -> None:
    variables = tiny_astromer_variables(
        np.random.default_rng(2),
        encoder_root="layer_with_weights-1/",
        embedding_root="layer_with_weights-0/",
        head_root="layer_with_weights-2/",
    )
    variables["layer_with_weights-1/msk_token"] = np.array([[0.5372]], dtype=np.float32)
    optimizer = {
        "optimizer/iter": np.array(31040, np.int64),
        "optimizer/learning_rate": np.array(1e-5, np.float32),
    }
    write_variables(tmp_path / "tf" / "weights", variables | optimizer)
    out = convert_tf_checkpoint(tmp_path / "tf" / "weights", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["use_mask_token"] is True
    assert config["conversion_source"]["optimizer_iter"] == 31040
    assert config["conversion_source"]["optimizer_learning_rate"] == pytest.approx(1e-5, rel=1e-6)
    mapping = _expected_mapping({k: v for k, v in variables.items() if "msk" not in k}, 2, True)
    mapping["astromer.embeddings.mask_token"] = "layer_with_weights-1/msk_token"
    _assert_folder_matches(out, variables, mapping)


def test_missing_or_extra_variables_fail_and_write_nothing(tmp_path: Path) -> None:
    variables = tiny_astromer_variables(np.random.default_rng(3))
    missing = {
        k: v for k, v in variables.items() if k != "layer_with_weights-0/enc_layers/1/layernorm2/gamma"
    }
    extra = dict(variables)
    extra["layer_with_weights-2/dense_7/kernel"] = np.zeros((16, 5), np.float32)
    for name, broken, message in (
        ("missing", missing, r"missing from the checkpoint:\n  astromer\.layers\.1\.output_norm\.weight"),
        ("extra", extra, r"match no parameter.*\n  layer_with_weights-2/dense_7/kernel \[16, 5\]"),
    ):
        write_variables(tmp_path / name / "weights", broken)
        with pytest.raises(CheckpointConversionError, match=message):
            convert_tf_checkpoint(tmp_path / name, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "missing"]

    wrong_shape = dict(variables)
    wrong_shape["layer_with_weights-0/enc_layers/0/mha/wk/bias"] = np.zeros(15, np.float32)
    write_variables(tmp_path / "shape" / "weights", wrong_shape)
    with pytest.raises(
        CheckpointConversionError, match=r"attention\.k_proj\.bias: checkpoint \[15\], model \[16\]"
    ):
        convert_tf_checkpoint(tmp_path / "shape", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_classifier_head_is_refused_clearly(tmp_path: Path) -> None:
    variables = tiny_astromer_variables(
        np.random.default_rng(4), encoder_root="layer_with_weights-1/", embedding_root="layer_with_weights-0/"
    )
    del variables["layer_with_weights-1/bn_0/gamma"], variables["layer_with_weights-1/bn_0/beta"]
    del variables["layer_with_weights-1/reg_layer/kernel"], variables["layer_with_weights-1/reg_layer/bias"]
    variables["layer_with_weights-2/kernel"] = np.zeros((16, 8), np.float32)
    variables["layer_with_weights-2/bias"] = np.zeros(8, np.float32)
    write_variables(tmp_path / "clf" / "weights", variables)
    with pytest.raises(CheckpointConversionError, match="fine-tuned classifier checkpoint") as info:
        convert_tf_checkpoint(tmp_path / "clf", tmp_path / "out")
    assert "reconstruction_head.proj.weight" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_clobber_and_overwrites_on_request(tmp_path: Path) -> None:
    variables = tiny_astromer_variables(np.random.default_rng(5), leak=False)
    write_variables(tmp_path / "tf" / "weights", variables)
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointConversionError, match="exists and is not empty; pass overwrite=True"):
        convert_tf_checkpoint(tmp_path / "tf", dst)
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointConversionError, match="is not a folder"):
        convert_tf_checkpoint(tmp_path / "tf", tmp_path / "file", overwrite=True)

    convert_tf_checkpoint(tmp_path / "tf", dst, overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_tf_checkpoint(tmp_path / "tf", empty)  # an empty folder is not clobbering
    assert (empty / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "hf", "tf"]


def test_variant_and_sidecar_checks(tmp_path: Path) -> None:
    variables = tiny_astromer_variables(np.random.default_rng(6), leak=False)
    write_variables(tmp_path / "tf" / "weights", variables)
    checkpoint = read_tf_checkpoint(tmp_path / "tf")
    config, state = tf_state_dict(checkpoint, variant="astromer1")
    assert config.attention_bias_mode == "a1_query_key_bias" and config.use_residual_projection is False
    assert state["astromer.layers.0.ffn.fc_in.weight"].shape == (24, 16)
    assert state["astromer.layers.0.ffn.fc_in.weight"].is_contiguous()
    with pytest.raises(CheckpointConversionError, match="variant must be one of"):
        tf_state_dict(checkpoint, variant="astromer3")

    (tmp_path / "tf" / "config.toml").write_text(
        "num_layers = 2\nnum_heads = 2\nmixer = 24\nuse_leak = false\n"
    )
    config, _ = tf_state_dict(read_tf_checkpoint(tmp_path / "tf"))
    assert config.num_attention_heads == 2 and config.conversion_source["variant"] == "astromer2"
    config, _ = tf_state_dict(read_tf_checkpoint(tmp_path / "tf"), variant="astromer2")  # the config agrees
    assert config.attention_bias_mode == "key_mask" and config.use_residual_projection is False
    (tmp_path / "tf" / "config.toml").write_text("num_layers = 6\nmixer = 24\n")
    with pytest.raises(
        CheckpointConversionError, match=r"config\.toml does not describe these weights: layers=6"
    ):
        tf_state_dict(read_tf_checkpoint(tmp_path / "tf"))


@pytest.mark.parametrize("name", ["astromer1_macho_a0", "astromer2_tf_random"])
def test_convert_reference_checkpoints(reference_dir: Path, tmp_path: Path, name: str) -> None:
    src = reference_dir / name
    out = convert_tf_checkpoint(src, tmp_path / name)
    variables = read_tf_checkpoint(src).variables
    a2 = name.startswith("astromer2")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == (6 if a2 else 2)
    assert config["intermediate_size"] == (512 if a2 else 128)
    assert config["use_residual_projection"] is a2 and config["use_mask_token"] is False
    assert config["attention_bias_mode"] == ("key_mask" if a2 else "a1_query_key_bias")
    assert config["conversion_source"]["variant"] == ("astromer2" if a2 else "astromer1")
    assert json.loads((out / "preprocessor_config.json").read_text())["window_size"] == 200
    _assert_folder_matches(out, variables, _expected_mapping(variables, 6 if a2 else 2, a2))


def test_converted_a2_reproduces_tf_reconstruction(reference_dir: Path, tmp_path: Path) -> None:
    """End-to-end smoke check of the mapping (transposes, residual order) against TF's inference output."""
    from modeling_astromer.modeling_astromer import AstromerForMaskedReconstruction

    out = convert_tf_checkpoint(reference_dir / "astromer2_tf_random", tmp_path / "a2")
    ref = np.load(reference_dir / "astromer2_tf_random.npz")
    real = 1 - ref["inf_mask_in"]
    model = AstromerForMaskedReconstruction.from_pretrained(out).eval()
    with torch.no_grad():
        output = model(
            magnitudes=torch.from_numpy(ref["inf_input"][:8]),
            times=torch.from_numpy(ref["times"][:8]),
            attention_mask=torch.from_numpy(real[:8]).long(),
        )
    reconstruction = output.reconstruction.reshape(8, -1).double().numpy()
    diff = np.abs(reconstruction - ref["inf_reconstruction"][:8]) * real[:8]
    assert diff.max() < 1e-4  # the tolerance the reference data states for this array


@pytest.mark.parametrize("leak", [True, False])
def test_issue14_item2_wrong_variant_is_refused_and_nothing_is_written(tmp_path: Path, leak: bool) -> None:
    """A variant that contradicts the checkpoint's variable names is an error: converting an Astromer 1 checkpoint
    as Astromer 2 (or the reverse) used to write a model whose embeddings were 33-55 % off."""
    write_variables(tmp_path / "tf" / "weights", tiny_astromer_variables(np.random.default_rng(7), leak=leak))
    wrong = "astromer1" if leak else "astromer2"
    detected = "astromer2" if leak else "astromer1"
    with pytest.raises(CheckpointConversionError, match=f"variant '{wrong}' contradicts the checkpoint, which is {detected}"):
        convert_tf_checkpoint(tmp_path / "tf", tmp_path / "out", variant=wrong)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert cli_main(["convert", str(tmp_path / "tf"), str(tmp_path / "out"), "--variant", wrong]) == 1
    assert not (tmp_path / "out").exists()
    convert_tf_checkpoint(tmp_path / "tf", tmp_path / "out", variant=detected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["conversion_source"]["variant"] == detected


def test_wrong_variant_against_the_training_configuration(tmp_path: Path) -> None:
    write_variables(tmp_path / "tf" / "weights", tiny_astromer_variables(np.random.default_rng(8), leak=False))
    (tmp_path / "tf" / "conf.json").write_text(json.dumps({"layers": 2, "dff": 24, "heads": 2}))
    with pytest.raises(CheckpointConversionError, match="conf.json belongs to astromer1"):
        tf_state_dict(read_tf_checkpoint(tmp_path / "tf"), variant="astromer2")


def test_issue14_item2_wrong_variant_on_the_reference_checkpoints(reference_dir: Path, tmp_path: Path) -> None:
    for name, wrong in (("astromer1_macho_a0", "astromer2"), ("astromer2_tf_random", "astromer1")):
        with pytest.raises(CheckpointConversionError, match="contradicts the checkpoint"):
            convert_tf_checkpoint(reference_dir / name, tmp_path / name, variant=wrong)
        assert not (tmp_path / name).exists()



def test_conversion_records_provenance_checksums_and_licence(reference_dir: Path, tmp_path: Path) -> None:
    provenance = {"repository": "https://github.com/astromer-science/weights", "commit": "649eda4", "license": "mit"}
    out = convert_tf_checkpoint(reference_dir / "astromer1_macho_a0", tmp_path / "a1", provenance=provenance)
    source = json.loads((out / "config.json").read_text())["conversion_source"]
    assert {k: source[k] for k in provenance} == provenance
    bundled = json.loads((bundled_model_path("astromer1-macho") / "config.json").read_text())["conversion_source"]
    assert source["files"] == bundled["files"]  # the bundled weights were converted from these very files
    assert set(source["files"]) == {"weights.index", "weights.data-00000-of-00001", "conf.json"}
    assert (out / "LICENSE").read_bytes() == (reference_dir / "astromer1_macho_a0" / "LICENSE").read_bytes()
    with pytest.raises(CheckpointConversionError, match="unknown provenance field"):
        convert_tf_checkpoint(reference_dir / "astromer1_macho_a0", tmp_path / "b", provenance={"licence": "mit"})
    assert cli_main(["convert", str(reference_dir / "astromer1_macho_a0"), str(tmp_path / "c"), "--license", "mit"]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["conversion_source"]["license"] == "mit"
