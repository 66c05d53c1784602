"""The binary container shared by the HTTP API, the stream trainer and Spark.

Layout: ``MAGIC`` (8 bytes) | header length (uint32, little-endian) | header (UTF-8 JSON) | payload.
The payload is the arrays listed in ``header["arrays"]`` (name and shape, in that order), each as raw
little-endian float32 in C order, back to back. The header's ``format`` says what the container
holds and ``format_version`` how to read it.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

MAGIC = b"FLEADNN\x00"
DTYPE = "<f4"
_LENGTH = struct.Struct("<I")


def pack(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """`header` plus the array layout as JSON, then the arrays as little-endian float32."""
    layout = [{"name": name, "shape": list(np.shape(value))} for name, value in arrays.items()]
    text = json.dumps({**header, "dtype": DTYPE, "arrays": layout}, allow_nan=False, separators=(",", ":"))
    encoded = text.encode("utf-8")
    payload = [np.ascontiguousarray(value, dtype=DTYPE) for value in arrays.values()]
    return b"".join([MAGIC, _LENGTH.pack(len(encoded)), encoded, *payload])  # one copy of the arrays


def unpack(
    data: bytes, expected_format: str, versions: tuple[int, ...]
) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the arrays (float32, writable) of a container; ValueError on anything malformed."""
    data = bytes(data)
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start or not data.startswith(MAGIC):
        raise ValueError("not a FLEAD container (bad magic bytes or too short)")
    (header_length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if len(data) < start + header_length:
        raise ValueError(f"truncated container: header of {header_length} bytes, {len(data) - start} present")
    try:
        header = json.loads(data[start : start + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt container header: {exc}") from exc
    check_header(header, expected_format, versions)
    if header.get("dtype") != DTYPE:
        raise ValueError(f"unsupported dtype {header.get('dtype')!r} (this build reads {DTYPE})")
    layout = _layout(header)
    payload = memoryview(data)[start + header_length :]
    needed = sum(4 * math.prod(shape) for _, shape in layout)
    if len(payload) != needed:
        state = "truncated" if len(payload) < needed else "has trailing bytes"
        raise ValueError(f"container payload {state}: {len(payload)} bytes, the header describes {needed}")
    arrays, offset = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        arrays[name] = np.frombuffer(payload, DTYPE, n, offset).astype(np.float32).reshape(shape)
        offset += 4 * n
    return header, arrays


def check_header(header: object, expected_format: str, versions: tuple[int, ...]) -> None:
    if not isinstance(header, dict):
        raise ValueError("the header must be a JSON object")
    if header.get("format") != expected_format:
        raise ValueError(f"expected format {expected_format!r}, got {header.get('format')!r}")
    if header.get("format_version") not in versions:
        raise ValueError(
            f"unknown {expected_format} format_version {header.get('format_version')!r} "
            f"(this build reads {', '.join(map(str, versions))})"
        )


def _layout(header: dict) -> list[tuple[str, tuple[int, ...]]]:
    layout = header.get("arrays")
    if not isinstance(layout, list):
        raise ValueError("the header lacks the array layout")
    out = []
    for entry in layout:
        try:
            name, shape = entry["name"], tuple(entry["shape"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad array entry {entry!r}") from exc
        if not isinstance(name, str) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"bad array entry {entry!r}")
        out.append((name, shape))
    if len({name for name, _ in out}) != len(out):
        raise ValueError("duplicate array names in the header")
    return out


def nested_lists(value: np.ndarray) -> list:
    """float32 values as Python floats: exact in JSON, so float32(parse(dump(x))) == x bit for bit."""
    return np.asarray(value, np.float32).astype(np.float64).tolist()
