"""The global API's admin token for a local deployment.

``settings.api_admin_key`` (``FLEAD_API_ADMIN_KEY``) wins when set. Otherwise a random token is
generated once and kept in ``<state_dir>/api_admin_key`` (mode 0600), so the supervised API, the
supervised stream trainer and the Dagster resources all present the same token across restarts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from flead.config import Settings

ADMIN_KEY_FILE = "api_admin_key"


def admin_key_file(settings: Settings) -> Path:
    return Path(settings.state_dir) / ADMIN_KEY_FILE


def local_admin_key(settings: Settings) -> str:
    """The admin token: the configured one, else the persisted generated one (created on first use)."""
    if settings.api_admin_key is not None and settings.api_admin_key.get_secret_value():
        return settings.api_admin_key.get_secret_value()
    path = admin_key_file(settings)
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"flead_local_{secrets.token_urlsafe(32)}"
    # O_EXCL: of two processes creating it at once, one writes and the other reads the winner's token.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_written(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _read_when_written(path: Path, attempts: int = 50) -> str:
    """A token file another process has just created (its content may trail the creation briefly)."""
    for _ in range(attempts):
        token = path.read_text().strip()
        if token:
            return token
        time.sleep(0.02)  # the creator writes right after creating; bounded wait
    raise RuntimeError(f"{path} is empty; delete it to generate a new admin token")
