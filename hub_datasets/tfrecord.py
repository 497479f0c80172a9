"""TFRecord files of ``tf.train.SequenceExample`` light curves, read and written without TensorFlow.

Two layers, both hand-written against the public specifications:

* **Framing** (TFRecord): each record is ``uint64 length | uint32 masked_crc32c(length) | payload |
  uint32 masked_crc32c(payload)``, little endian, with ``masked = ((crc >> 15) | (crc << 17)) + 0xA282EAD8``.
  CRC32C comes from ``google_crc32c``.
* **Payload** (protobuf wire format) of the messages in ``tensorflow/core/example/{example,feature}.proto``::

      SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
      Features        { map<string, Feature> feature = 1; }          // map entry: key = 1, value = 2
      FeatureLists    { map<string, FeatureList> feature_list = 1; }
      FeatureList     { repeated Feature feature = 1; }
      Feature         { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
      BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
      Int64List { repeated int64 value = 1 [packed]; }

The Astromer layout (``src/data/record.py``): context ``ID`` (bytes), ``Class`` (bytes), ``Label`` (int64),
``Band`` and ``shard``; feature lists ``mjd``, ``mag``, ``errmag``, each holding **one** Feature whose float_list is
the whole sequence in float32. The decoder also accepts unpacked repeated fields and one Feature per element.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hub_datasets.atomic import atomic_file
from hub_datasets.wire_format import (
    VARINT,
    WireFormatError,
    encode_length_delimited,
    encode_varint,
    iter_fields,
    masked_crc32c,
    read_varint,
    to_int64,
)
from modeling_astromer.errors import AstromerError


class TFRecordError(AstromerError, ValueError):
    """A TFRecord file is truncated, fails its CRC, or holds a payload that is not a valid SequenceExample."""


def encode_feature(value: object) -> bytes:
    """Encode one ``Feature``: ``bytes``/``str`` → BytesList, integers → Int64List, floats → packed FloatList."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return encode_length_delimited(1, encode_length_delimited(1, value))
    array = np.asarray(value)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.dtype.kind in "iub":
        packed = b"".join(encode_varint(int(v)) for v in array)
        return encode_length_delimited(3, encode_length_delimited(1, packed))
    if array.dtype.kind == "f":
        return encode_length_delimited(2, encode_length_delimited(1, array.astype("<f4").tobytes()))
    raise TypeError(f"cannot encode a Feature from dtype {array.dtype}")


def encode_sequence_example(
    context: Mapping[str, object], feature_lists: Mapping[str, list[object]]
) -> bytes:
    """Serialise a SequenceExample; ``feature_lists[name]`` is a list of Feature values (Astromer: one array)."""
    ctx = b"".join(
        encode_length_delimited(1, encode_length_delimited(1, key.encode()) + encode_length_delimited(2, encode_feature(val))) for key, val in context.items()
    )
    lists = b"".join(
        encode_length_delimited(1, encode_length_delimited(1, key.encode()) + encode_length_delimited(2, b"".join(encode_length_delimited(1, encode_feature(v)) for v in values)))
        for key, values in feature_lists.items()
    )
    return encode_length_delimited(1, ctx) + encode_length_delimited(2, lists)


# --------------------------------------------------------------------------------------------- wire format: decode
def decode_feature(buf: bytes) -> list[bytes] | np.ndarray:
    """Decode a ``Feature``: BytesList → list of bytes; FloatList → float32 array; Int64List → int64 array."""
    for number, _wire, payload in iter_fields(buf):
        if number == 1:
            return [v for n, _w, v in iter_fields(payload) if n == 1]  # type: ignore[misc]
        if number == 2:
            chunks: list[np.ndarray] = []
            for n, _w, v in iter_fields(payload):
                if n != 1:
                    continue
                chunks.append(np.frombuffer(v, dtype="<f4"))  # type: ignore[arg-type]  # packed run or one fixed32
            return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        if number == 3:
            values: list[int] = []
            for n, w, v in iter_fields(payload):
                if n != 1:
                    continue
                if w == VARINT:
                    values.append(to_int64(v))  # type: ignore[arg-type]
                else:
                    pos = 0
                    while pos < len(v):  # type: ignore[arg-type]
                        item, pos = read_varint(v, pos)  # type: ignore[arg-type]
                        values.append(to_int64(item))
            return np.asarray(values, dtype=np.int64)
    return np.zeros(0, np.float32)  # an empty Feature (no kind set)


def _decode_map(buf: bytes) -> Iterator[tuple[str, bytes]]:
    for number, _wire, entry in iter_fields(buf):
        if number != 1:
            continue
        key, value = "", b""
        for n, _w, v in iter_fields(entry):  # type: ignore[arg-type]
            if n == 1:
                key = v.decode()  # type: ignore[union-attr]
            elif n == 2:
                value = v  # type: ignore[assignment]
        yield key, value


@dataclass
class SequenceExample:
    """A decoded SequenceExample: context features and feature lists (each a list of decoded Features)."""

    context: dict[str, list[bytes] | np.ndarray] = field(default_factory=dict)
    feature_lists: dict[str, list[list[bytes] | np.ndarray]] = field(default_factory=dict)


def decode_sequence_example(buf: bytes) -> SequenceExample:
    """Parse a serialised SequenceExample; a malformed payload raises :class:`TFRecordError`."""
    try:
        return _decode_sequence_example(buf)
    except WireFormatError as exc:
        raise TFRecordError(str(exc)) from exc


def _decode_sequence_example(buf: bytes) -> SequenceExample:
    example = SequenceExample()
    for number, _wire, payload in iter_fields(buf):
        if number == 1:
            for key, value in _decode_map(payload):  # type: ignore[arg-type]
                example.context[key] = decode_feature(value)
        elif number == 2:
            for key, value in _decode_map(payload):  # type: ignore[arg-type]
                example.feature_lists[key] = [
                    decode_feature(v)
                    for n, _w, v in iter_fields(value)
                    if n == 1  # type: ignore[arg-type]
                ]
    return example


# --------------------------------------------------------------------------------------------------- framing
def write_tfrecord(path: str | Path, payloads: list[bytes]) -> None:
    """Write serialised records to ``path`` with TFRecord framing (atomically: temp file, then rename)."""
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        for payload in payloads:
            header = struct.pack("<Q", len(payload))
            handle.write(header + struct.pack("<I", masked_crc32c(header)))
            handle.write(payload + struct.pack("<I", masked_crc32c(payload)))


def iter_tfrecord(path: str | Path, verify_crc: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield ``(record_index, payload)`` from a TFRecord file; errors name the file and record index."""
    with open(path, "rb") as handle:
        index = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: record {index}: truncated header ({len(header)} of 12 bytes)")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify_crc and masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(
                    f"{path}: record {index}: length CRC mismatch (corrupt or not a TFRecord file)"
                )
            body = handle.read(length + 4)
            if len(body) < length + 4:
                raise TFRecordError(
                    f"{path}: record {index}: truncated payload ({len(body)} of {length + 4} bytes)"
                )
            payload = body[:length]
            (payload_crc,) = struct.unpack("<I", body[length:])
            if verify_crc and masked_crc32c(payload) != payload_crc:
                raise TFRecordError(f"{path}: record {index}: payload CRC mismatch")
            yield index, payload
            index += 1
