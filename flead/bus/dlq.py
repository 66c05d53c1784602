"""The dead-letter topic: a rejected message's original bytes, with the reason and origin in headers."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer

from flead.bus.codec import Rejected


def dead_letter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("flead.error", rejected.reason.encode()),
        ("flead.source.topic", rejected.topic.encode()),
        ("flead.source.partition", str(rejected.partition).encode()),
        ("flead.source.offset", str(rejected.offset).encode()),
    ]


def send_dead_letters(producer: KafkaProducer, topic: str, rejected: Iterable[Rejected]) -> list:
    """Publish each rejected message unchanged to `topic`; returns the send futures."""
    return [producer.send(topic, key=r.key, value=r.value, headers=dead_letter_headers(r)) for r in rejected]
