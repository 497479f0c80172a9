"""The two binary primitives of TensorFlow's file formats: protobuf wire-format fields and the masked CRC32C.

Both TFRecord files (survey data) and TensorFlow checkpoint bundles (the official weights) are read with these,
without TensorFlow:

* **Protobuf wire format**: a message is a run of fields ``varint(number << 3 | wire_type) value``, where the value
  is a base-128 varint (wire type 0), 8 or 4 little-endian bytes (types 1 and 5) or a varint length followed by that
  many bytes (type 2). Negative int64 values are 10-byte varints of their two's complement.
* **Masked CRC32C** (LevelDB, TFRecord, checkpoint bundles): ``((crc >> 15) | (crc << 17)) + 0xA282EAD8`` mod 2**32,
  with CRC32C from ``google_crc32c``.
"""

from __future__ import annotations

from collections.abc import Iterator

import google_crc32c

from modeling_astromer.errors import AstromerError

__all__ = [
    "FIXED32",
    "FIXED64",
    "LENGTH_DELIMITED",
    "VARINT",
    "WireFormatError",
    "encode_length_delimited",
    "encode_varint",
    "iter_fields",
    "masked_crc32c",
    "read_varint",
    "to_int64",
]

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_CRC_MASK_DELTA = 0xA282EAD8
_MAX_VARINT_BYTES = 10


class WireFormatError(AstromerError, ValueError):
    """Bytes that are not a valid protobuf message (truncated, overlong varint, unknown wire type)."""


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC32C of ``data`` that TFRecord files and checkpoint bundles store."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def read_varint(buf: bytes | memoryview, pos: int, where: str = "message") -> tuple[int, int]:
    """Decode the base-128 varint at ``buf[pos]``; returns ``(unsigned value, position after it)``."""
    result = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos >= len(buf):
            raise WireFormatError(f"{where}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result, pos
    raise WireFormatError(f"{where}: varint longer than {_MAX_VARINT_BYTES} bytes")


def to_int64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint value as a signed int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: bytes | memoryview, where: str = "message") -> Iterator[tuple[int, int, int | bytes]]:
    """Yield the ``(field_number, wire_type, value)`` of a serialized message, in order.

    The value is an unsigned ``int`` for varints and the raw ``bytes`` for the other wire types (little-endian for
    the fixed-width ones: ``int.from_bytes(value, "little")`` or ``numpy.frombuffer`` decode them).
    """
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos, where)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireFormatError(f"{where}: invalid protobuf field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, where)
            yield number, wire_type, value
            continue
        if wire_type == LENGTH_DELIMITED:
            width, pos = read_varint(buf, pos, where)
        elif wire_type in (FIXED32, FIXED64):
            width = 4 if wire_type == FIXED32 else 8
        else:
            raise WireFormatError(f"{where}: unsupported protobuf wire type {wire_type} (field {number})")
        if pos + width > len(buf):
            raise WireFormatError(f"{where}: field {number} runs past the end of its message")
        yield number, wire_type, bytes(buf[pos : pos + width])
        pos += width


def encode_varint(value: int) -> bytes:
    """The varint encoding of ``value`` (negative int64 values take 10 bytes, as protobuf writes them)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def encode_length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field ``number`` holding ``payload``."""
    return encode_varint((number << 3) | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload
