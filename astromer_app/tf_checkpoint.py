"""Pure-numpy reader of TensorFlow 2 "bundle" checkpoints (``tf.train.Checkpoint`` / Keras ``save_weights``).

A checkpoint is a prefix ``<dir>/<name>`` with two kinds of files:

* ``<prefix>.index``: a LevelDB-format SSTable (uncompressed) mapping each checkpoint key to a serialized
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C), plus a ``BundleHeaderProto`` under
  the empty key;
* ``<prefix>.data-SSSSS-of-NNNNN``: raw little-endian C-order tensor bytes.

Only what the Astromer converter needs is supported, and everything else is rejected with a
:class:`TFCheckpointError` naming the file and the problem: no compression, no partitioned (sliced)
variables, numeric dtypes only (string tensors such as ``_CHECKPOINTABLE_OBJECT_GRAPH`` are skipped).
Every index block and every returned tensor is CRC-checked. The format is described in
TensorFlow's ``tensor_bundle.proto`` and LevelDB's ``table_format.md``.
"""

from __future__ import annotations

import codecs
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hub_datasets.wire_format import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    WireFormatError,
    iter_fields,
    masked_crc32c,
    read_varint,
    to_int64,
)
from modeling_astromer.errors import AstromerError

__all__ = [
    "TFCheckpoint",
    "TFCheckpointError",
    "read_tf_checkpoint",
    "resolve_checkpoint_prefix",
]

VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
OPTIMIZER_SLOT_MARKER = ".OPTIMIZER_SLOT/"
OPTIMIZER_PREFIX = "optimizer/"

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles (varints) zero-padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # compression-type byte + masked CRC32C (uint32 LE)

_DT_STRING = 7
_DT_BFLOAT16 = 14
# TensorFlow DataType enum -> numpy dtype (little-endian). bfloat16 is widened to float32 after reading.
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    _DT_BFLOAT16: np.dtype("<u2"),  # DT_BFLOAT16 (raw bits)
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


class TFCheckpointError(AstromerError, ValueError):
    """A TensorFlow checkpoint is missing, malformed, corrupted or uses an unsupported feature."""


@dataclass(frozen=True)
class TFCheckpoint:
    """The model variables of one TF2 checkpoint.

    Attributes:
        prefix: the checkpoint prefix (``<dir>/<name>``, without ``.index``).
        variables: model variables keyed by checkpoint key with ``/.ATTRIBUTES/VARIABLE_VALUE`` stripped,
            e.g. ``"layer_with_weights-0/inp_transform/kernel"`` -> float32 array of shape ``[1, 256]``.
        optimizer: scalar optimizer hyper-parameters (``"learning_rate"``, ``"iter"``, ``"beta_1"``, ...) when the
            checkpoint holds them, keyed without the ``optimizer/`` prefix; 0-d arrays.
        skipped_keys: full keys that were deliberately not read (string tensors, optimizer slots, non-scalar
            optimizer state), for reporting.
    """

    prefix: Path
    variables: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    skipped_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class _BundleEntry:
    """Decoded ``BundleEntryProto``."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    has_slices: bool


def _decode_shape(buf: bytes, where: str) -> tuple[int, ...]:
    """Decode a ``TensorShapeProto`` (repeated field 2 ``dim`` {1: size}, field 3 ``unknown_rank``)."""
    dims: list[int] = []
    for number, wire_type, value in iter_fields(buf, where):
        if number == 2 and wire_type == LENGTH_DELIMITED:
            size = 0
            for dim_number, dim_wire, dim_value in iter_fields(value, where):  # type: ignore[arg-type]
                if dim_number == 1 and dim_wire == VARINT:
                    size = to_int64(dim_value)  # type: ignore[arg-type]
            if size < 0:
                raise TFCheckpointError(f"{where}: tensor shape has an unknown dimension ({size})")
            dims.append(size)
        elif number == 3 and wire_type == VARINT and value:
            raise TFCheckpointError(f"{where}: tensor shape has unknown rank")
    return tuple(dims)


def _decode_bundle_entry(buf: bytes, where: str) -> _BundleEntry:
    """Decode a ``BundleEntryProto``; absent fields take the protobuf default (0)."""
    dtype = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    has_slices = False
    for number, wire_type, value in iter_fields(buf, where):
        if number == 1 and wire_type == VARINT:
            dtype = value  # type: ignore[assignment]
        elif number == 2 and wire_type == LENGTH_DELIMITED:
            shape = _decode_shape(value, where)  # type: ignore[arg-type]
        elif number == 3 and wire_type == VARINT:
            shard_id = value  # type: ignore[assignment]
        elif number == 4 and wire_type == VARINT:
            offset = to_int64(value)  # type: ignore[arg-type]
        elif number == 5 and wire_type == VARINT:
            size = to_int64(value)  # type: ignore[arg-type]
        elif number == 6 and wire_type == FIXED32:
            crc = int.from_bytes(value, "little")  # type: ignore[arg-type]
        elif number == 7:
            has_slices = True
    if offset < 0 or size < 0:
        raise TFCheckpointError(f"{where}: negative offset {offset} or size {size}")
    return _BundleEntry(dtype, shape, shard_id, offset, size, crc, has_slices)


def _decode_bundle_header(buf: bytes, where: str) -> tuple[int, bool]:
    """Decode a ``BundleHeaderProto``; returns ``(num_shards, little_endian)``."""
    num_shards, endianness = 0, 0
    for number, wire_type, value in iter_fields(buf, where):
        if number == 1 and wire_type == VARINT:
            num_shards = value  # type: ignore[assignment]
        elif number == 2 and wire_type == VARINT:
            endianness = value  # type: ignore[assignment]
    return num_shards, endianness == 0


# --------------------------------------------------------------------------------------------- LevelDB table


def _read_block(table: bytes, offset: int, size: int, index_path: Path, what: str) -> memoryview:
    """Return the contents of one table block after checking its trailer (no compression, masked CRC32C)."""
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_SIZE > len(table) - _FOOTER_SIZE:
        raise TFCheckpointError(
            f"{index_path}: {what} block [{offset}, {end}) plus trailer runs past the end of the table "
            f"({len(table)} bytes): the index file is truncated or corrupted"
        )
    compression = table[end]
    if compression != 0:
        raise TFCheckpointError(
            f"{index_path}: {what} block at offset {offset} uses compression type {compression}; "
            "only uncompressed tables (type 0) are supported"
        )
    (stored_crc,) = struct.unpack_from("<I", table, end + 1)
    actual_crc = masked_crc32c(table[offset : end + 1])
    if stored_crc != actual_crc:
        raise TFCheckpointError(
            f"{index_path}: CRC mismatch in {what} block at offset {offset} "
            f"(stored {stored_crc:#010x}, computed {actual_crc:#010x}): the index file is corrupted"
        )
    return memoryview(table)[offset:end]


def _iter_block_entries(block: memoryview, index_path: Path, what: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(key, value)`` pairs of one block, undoing LevelDB prefix compression."""
    where = f"{index_path}: {what} block"
    if len(block) < 4:
        raise TFCheckpointError(f"{where} is shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 - 4 * num_restarts
    if entries_end < 0:
        raise TFCheckpointError(f"{where} declares {num_restarts} restart points, more than it can hold")
    restarts = struct.unpack_from(f"<{num_restarts}I", block, entries_end)
    if any(r >= max(entries_end, 1) for r in restarts) or list(restarts) != sorted(restarts):
        raise TFCheckpointError(f"{where} has restart offsets outside its entries or out of order")
    pos = 0
    key = b""
    while pos < entries_end:
        shared, pos = read_varint(block, pos, where)
        non_shared, pos = read_varint(block, pos, where)
        value_len, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + non_shared + value_len > entries_end:
            raise TFCheckpointError(f"{where}: malformed entry at byte {pos} (key or value out of bounds)")
        new_key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        if key and new_key <= key:
            raise TFCheckpointError(f"{where}: keys are not strictly increasing at {new_key!r}")
        key = new_key
        yield key, bytes(block[pos : pos + value_len])
        pos += value_len


def _iter_table(index_path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield every ``(key, value)`` of a TF bundle ``.index`` table, in key order."""
    table = index_path.read_bytes()
    if len(table) < _FOOTER_SIZE:
        raise TFCheckpointError(
            f"{index_path}: file is {len(table)} bytes, shorter than the {_FOOTER_SIZE}-byte table footer "
            "(truncated or not a TensorFlow checkpoint index)"
        )
    footer = table[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)
    if magic != _TABLE_MAGIC:
        raise TFCheckpointError(
            f"{index_path}: bad table magic {magic:#018x} (expected {_TABLE_MAGIC:#018x}): "
            "not a TensorFlow checkpoint index, or the file is truncated"
        )
    where = f"{index_path}: footer"
    _, pos = read_varint(footer, 0, where)  # metaindex offset (TF bundles leave the metaindex empty)
    _, pos = read_varint(footer, pos, where)  # metaindex size
    index_offset, pos = read_varint(footer, pos, where)
    index_size, pos = read_varint(footer, pos, where)
    index_block = _read_block(table, index_offset, index_size, index_path, "index")
    for separator, handle in _iter_block_entries(index_block, index_path, "index"):
        handle_where = f"{index_path}: handle of data block {separator!r}"
        data_offset, hpos = read_varint(handle, 0, handle_where)
        data_size, _ = read_varint(handle, hpos, handle_where)
        data_block = _read_block(table, data_offset, data_size, index_path, "data")
        for key, value in _iter_block_entries(data_block, index_path, "data"):
            try:
                yield key.decode("utf-8"), value
            except UnicodeDecodeError as err:
                raise TFCheckpointError(f"{index_path}: checkpoint key {key!r} is not valid UTF-8") from err


# --------------------------------------------------------------------------------------------- public API


def resolve_checkpoint_prefix(path: str | Path) -> Path:
    """Turn a checkpoint folder, prefix or ``.index`` path into the checkpoint prefix.

    A folder is resolved through its ``checkpoint`` text file (``model_checkpoint_path: "..."``, relative to the
    folder unless absolute) or, without one, through its single ``*.index`` file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        state_file = path / "checkpoint"
        if state_file.is_file():
            match = re.search(
                r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', state_file.read_text(), re.MULTILINE
            )
            if match is None:
                raise TFCheckpointError(f"{state_file}: no model_checkpoint_path entry")
            # text-format strings escape bytes C-style (octal for non-ASCII UTF-8); undo that on the raw bytes
            prefix = Path(codecs.escape_decode(match.group(1).encode("utf-8"))[0].decode("utf-8"))
            prefix = prefix if prefix.is_absolute() else path / prefix
            # A moved folder keeps a stale absolute path in its state file: fall back to the same name here.
            if not Path(f"{prefix}.index").is_file():
                local = path / prefix.name
                prefix = local if Path(f"{local}.index").is_file() else prefix
        else:
            indexes = sorted(path.glob("*.index"))
            if len(indexes) != 1:
                raise TFCheckpointError(
                    f"{path}: no 'checkpoint' file and {len(indexes)} '*.index' files; pass the checkpoint prefix "
                    "(e.g. <folder>/weights) explicitly"
                )
            prefix = indexes[0].with_suffix("")
    elif path.suffix == ".index":
        prefix = path.with_suffix("")
    else:
        prefix = path
    if not Path(f"{prefix}.index").is_file():
        raise TFCheckpointError(f"{prefix}.index: checkpoint index file not found")
    return prefix


def read_tf_checkpoint(path: str | Path) -> TFCheckpoint:
    """Read the numeric variables of a TF2 checkpoint without TensorFlow, verifying every CRC.

    Args:
        path: a checkpoint folder (with a ``checkpoint`` file), a prefix such as ``<dir>/weights``, or the
            ``.index`` file itself.

    Returns:
        A :class:`TFCheckpoint`. Tensors keep their dtype (bfloat16 is widened to float32) and shape; dense
        kernels are ``[in, out]`` as Keras stores them.

    Raises:
        TFCheckpointError: missing index or shard, bad magic, block or tensor CRC mismatch (naming the variable),
            truncated data, sliced variables or an unsupported dtype.
    """
    try:
        return _read_tf_checkpoint(path)
    except WireFormatError as exc:
        raise TFCheckpointError(f"malformed checkpoint index: {exc}") from exc


def _read_tf_checkpoint(path: str | Path) -> TFCheckpoint:
    prefix = resolve_checkpoint_prefix(path)
    index_path = Path(f"{prefix}.index")

    num_shards, little_endian = 1, True
    entries: list[tuple[str, _BundleEntry]] = []
    skipped: list[str] = []
    saw_header = False
    for key, value in _iter_table(index_path):
        if key == "":
            num_shards, little_endian = _decode_bundle_header(value, f"{index_path}: bundle header")
            saw_header = True
            continue
        entry = _decode_bundle_entry(value, f"{index_path}: entry {key!r}")
        if entry.dtype == _DT_STRING or key == OBJECT_GRAPH_KEY or OPTIMIZER_SLOT_MARKER in key:
            skipped.append(key)
            continue
        if key.startswith(OPTIMIZER_PREFIX) and entry.shape != ():
            skipped.append(key)
            continue
        entries.append((key, entry))
    if not saw_header:
        raise TFCheckpointError(
            f"{index_path}: no bundle header (empty key); not a TensorFlow checkpoint index"
        )
    if num_shards < 1:
        raise TFCheckpointError(f"{index_path}: bundle header declares {num_shards} data shards")

    variables: dict[str, np.ndarray] = {}
    optimizer: dict[str, np.ndarray] = {}
    shard_files: dict[int, object] = {}
    try:
        for key, entry in entries:
            array = _read_tensor(prefix, key, entry, num_shards, little_endian, shard_files)
            name = key.removesuffix(VARIABLE_SUFFIX)
            if name.startswith(OPTIMIZER_PREFIX):
                optimizer[name[len(OPTIMIZER_PREFIX) :]] = array
            else:
                variables[name] = array
    finally:
        for handle in shard_files.values():
            handle.close()  # type: ignore[attr-defined]
    return TFCheckpoint(prefix=prefix, variables=variables, optimizer=optimizer, skipped_keys=tuple(skipped))


def _shard_path(prefix: Path, shard_id: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


def _read_tensor(
    prefix: Path,
    key: str,
    entry: _BundleEntry,
    num_shards: int,
    little_endian: bool,
    shard_files: dict[int, object],
) -> np.ndarray:
    """Read, CRC-check and decode one tensor of the bundle."""
    if entry.has_slices:
        raise TFCheckpointError(f"{prefix}.index: variable {key!r} is partitioned (slices); not supported")
    dtype = _NUMPY_DTYPES.get(entry.dtype)
    if dtype is None:
        raise TFCheckpointError(
            f"{prefix}.index: variable {key!r} has unsupported TensorFlow dtype enum {entry.dtype}"
        )
    if not little_endian:
        dtype = dtype.newbyteorder(">")
    expected_size = math.prod(entry.shape) * dtype.itemsize
    if entry.size != expected_size:
        raise TFCheckpointError(
            f"{prefix}.index: variable {key!r} declares {entry.size} bytes but shape {list(entry.shape)} of "
            f"{dtype.name} needs {expected_size}"
        )
    if not 0 <= entry.shard_id < num_shards:
        raise TFCheckpointError(
            f"{prefix}.index: variable {key!r} is in shard {entry.shard_id}, but the bundle has {num_shards} shards"
        )
    shard = _shard_path(prefix, entry.shard_id, num_shards)
    handle = shard_files.get(entry.shard_id)
    if handle is None:
        try:
            handle = shard_files[entry.shard_id] = open(shard, "rb")  # noqa: SIM115 (closed by the caller)
        except FileNotFoundError as err:
            raise TFCheckpointError(f"{shard}: data shard not found (needed for variable {key!r})") from err
    handle.seek(entry.offset)  # type: ignore[attr-defined]
    raw = bytearray(entry.size)
    got = handle.readinto(raw)  # type: ignore[attr-defined]
    if got != entry.size:
        raise TFCheckpointError(
            f"{shard}: truncated data: variable {key!r} needs bytes [{entry.offset}, {entry.offset + entry.size}) "
            f"but only {got} were readable"
        )
    if entry.crc32c is None:
        raise TFCheckpointError(f"{prefix}.index: variable {key!r} has no CRC32C in its index entry")
    actual_crc = masked_crc32c(raw)
    if actual_crc != entry.crc32c:
        raise TFCheckpointError(
            f"{shard}: CRC mismatch for variable {key!r} (stored {entry.crc32c:#010x}, computed "
            f"{actual_crc:#010x}): the data shard is corrupted"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    if entry.dtype == _DT_BFLOAT16:  # bfloat16 = the high 16 bits of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
