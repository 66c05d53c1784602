"""Private embedded local services for a test: their settings on free ports."""

from __future__ import annotations

from pathlib import Path

from flead.local.services import free_port


def service_env(home: Path) -> dict[str, str]:
    """FLEAD_* variables for a private set of local services under `home`, on free ports."""
    return {
        "FLEAD_HOME": str(home),
        "FLEAD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FLEAD_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
    }
