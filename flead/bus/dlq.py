"""The dead-letter topic: a rejected message's original bytes, with the reason and origin in headers.

A dead letter must always be deliverable, whatever arrived: a value (or key) too large for the
producer or the broker is stored truncated to a bounded prefix, with headers saying so, why, and how
large the original was. Headers of every dead letter:

- ``flead.error``: why the message was rejected; ``flead.source.topic``, ``flead.source.partition``,
  ``flead.source.offset``: where it came from.
- only when truncated: ``flead.truncated`` (``true``), ``flead.truncated.reason``,
  ``flead.original.value_size`` and ``flead.original.key_size`` (bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaProducer

from flead.bus.codec import Rejected

KEY_PREFIX_BYTES = 256  # a truncated dead letter keeps this much of its key (device ids are <= 64)
REASON_BYTES = 4096  # and this much of its reason
PREFIX_BYTES = 64 * 1024  # and by default this much of its value


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against a producer's request limit."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(name) + len(value) for name, value in self.headers)
        )

    @property
    def truncated(self) -> bool:
        return any(name == "flead.truncated" for name, _ in self.headers)


def dead_letter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("flead.error", rejected.reason.encode()[:REASON_BYTES]),
        ("flead.source.topic", rejected.topic.encode()),
        ("flead.source.partition", str(rejected.partition).encode()),
        ("flead.source.offset", str(rejected.offset).encode()),
    ]


def value_limit(producer: KafkaProducer) -> int:
    """The longest value a dead letter keeps whole: half the producer's request limit, which leaves
    room for the key, the headers and the batch around it."""
    return producer.config["max_request_size"] // 2


def dead_letter(rejected: Rejected, max_value_bytes: int, prefix_bytes: int = PREFIX_BYTES) -> DeadLetter:
    """The dead letter of `rejected`: its original bytes, or, when its value is longer than
    `max_value_bytes` or its key longer than `KEY_PREFIX_BYTES`, a copy truncated to `prefix_bytes`."""
    value_size, key_size = len(rejected.value or b""), len(rejected.key or b"")
    if value_size <= max_value_bytes and key_size <= KEY_PREFIX_BYTES:
        return DeadLetter(rejected.key, rejected.value, dead_letter_headers(rejected))
    what = f"value of {value_size}" if value_size > max_value_bytes else f"key of {key_size}"
    why = f"{what} bytes is over the {max_value_bytes}-byte dead-letter limit"
    return truncated(rejected, min(prefix_bytes, max_value_bytes), why)


def truncated(rejected: Rejected, keep_bytes: int, why: str) -> DeadLetter:
    """`rejected` with at most `keep_bytes` of its value and `KEY_PREFIX_BYTES` of its key."""
    value, key = rejected.value or b"", rejected.key
    reason = f"{why}; kept the first {min(keep_bytes, len(value))} bytes of the value"
    headers = [
        *dead_letter_headers(rejected),
        ("flead.truncated", b"true"),
        ("flead.truncated.reason", reason.encode()[:REASON_BYTES]),
        ("flead.original.value_size", str(len(value)).encode()),
        ("flead.original.key_size", str(len(key or b"")).encode()),
    ]
    return DeadLetter(None if key is None else key[:KEY_PREFIX_BYTES], value[:keep_bytes], headers)
