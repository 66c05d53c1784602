"""Creating FLEAD's topics idempotently, and telling one incarnation of a topic from another."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from flead.bus.clients import make_admin
from flead.config import Settings


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool


def output_topics(settings: Settings) -> dict[str, int]:
    """The stream trainer's output topics (it creates them at start-up if they are missing)."""
    return {settings.topic_anomalies: 1, settings.topic_dlq: 1, settings.topic_late: 1}


def platform_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count the platform needs."""
    return {
        settings.topic_readings: settings.topic_readings_partitions,
        **output_topics(settings),
        settings.topic_smoke: 1,
    }


def ensure_topics(settings: Settings, topics: dict[str, int] | None = None) -> list[TopicState]:
    """Create the topics that are missing; report each with its actual partition count.

    An existing topic with fewer partitions than asked is an error: keyed per-device state relies on
    the partition count, so it is not changed behind the user's back.
    """
    wanted = topics if topics is not None else platform_topics(settings)
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        created = set()
        for name, partitions in wanted.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, settings.topic_replication_factor)])
                created.add(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    finally:
        admin.close()
    states = [TopicState(name, described.get(name, 0), name in created) for name in wanted]
    short = [s for s in states if s.partitions < wanted[s.name]]
    if short:
        detail = ", ".join(f"{s.name} has {s.partitions} (needs {wanted[s.name]})" for s in short)
        raise RuntimeError(f"topics with too few partitions: {detail}")
    return states


NO_TOPIC_ID = {None, "", "00000000-0000-0000-0000-000000000000", "AAAAAAAAAAAAAAAAAAAAAA"}


def topic_id(settings: Settings, topic: str) -> str | None:
    """Kafka's id of `topic` (a new one each time the topic is created), None if it does not exist
    or the broker gives topics no ids."""
    admin = make_admin(settings)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    found = next((t for t in described if t["name"] == topic and not t.get("error_code")), None)
    identity = None if found is None else found.get("topic_id")
    return None if identity in NO_TOPIC_ID else str(identity)
