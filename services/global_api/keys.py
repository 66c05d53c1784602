"""API tokens: created once, stored hashed in ``collection_api_keys``, checked in constant time.

A token reads ``flead_<key id>_<secret>``: the key id finds the stored key, the secret (32 random
bytes) is checked against its salted SHA-256 hash. A slow password hash (scrypt, bcrypt) protects
guessable passwords; these secrets have 256 bits of entropy, so one salted SHA-256 per request is as
safe and keeps authentication off the latency budget. The plain token exists only in what
``create`` returns. ``settings.api_admin_key`` (``FLEAD_API_ADMIN_KEY``) is an admin token as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from pymongo.collection import Collection

from flead.schema import DEVICE_ID_PATTERN

TOKEN_PREFIX = "flead"
MAX_TOKEN_LENGTH = 256
SETTINGS_ADMIN_KEY_ID = "settings-admin-key"


class Role(StrEnum):
    DEVICE = "device"  # submits updates for its own device only
    TRAINER = "trainer"  # submits updates for any device
    ADMIN = "admin"  # everything, including aggregation and configuration


@dataclass(frozen=True)
class Principal:
    """Who made a request."""

    role: Role
    key_id: str
    device_id: str | None = None

    def may_submit_for(self, device_id: str) -> bool:
        return self.role is not Role.DEVICE or self.device_id == device_id

    @property
    def label(self) -> str:
        return f"{self.role}:{self.device_id}" if self.device_id else f"{self.role}:{self.key_id}"


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    role: Role
    device_id: str | None
    token: str  # shown once, never stored


class KeyStore:
    def __init__(self, collection: Collection, *, admin_key: str | None = None) -> None:
        self._keys = collection
        self._admin_key = admin_key or None

    def create(
        self, role: Role | str, *, device_id: str | None = None, name: str | None = None
    ) -> CreatedKey:
        role = Role(role)
        if role is Role.DEVICE:
            if not device_id:
                raise ValueError("a device key is bound to one device: give its id (--device mote-01)")
            if not re.fullmatch(DEVICE_ID_PATTERN, device_id):
                raise ValueError(f"device id {device_id!r} does not match {DEVICE_ID_PATTERN}")
        elif device_id is not None:
            raise ValueError(f"a {role} key is not bound to a device; drop the device id")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        self._keys.insert_one(
            {
                "_id": key_id,
                "role": str(role),
                "device_id": device_id,
                "name": name,
                "salt": salt,
                "hash": _hash(secret, salt),
                "created_at": datetime.now(UTC),
                "revoked": False,
            }
        )
        return CreatedKey(key_id, role, device_id, f"{TOKEN_PREFIX}_{key_id}_{secret}")

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for, or None for an unknown, malformed or revoked token."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        if self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key.encode()):
            return Principal(Role.ADMIN, SETTINGS_ADMIN_KEY_ID)
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != TOKEN_PREFIX or not re.fullmatch(r"[0-9a-f]{16}", key_id) or not secret:
            return None
        doc = self._keys.find_one({"_id": key_id, "revoked": False})
        if doc is None or not hmac.compare_digest(_hash(secret, doc["salt"]), doc["hash"]):
            return None
        return Principal(Role(doc["role"]), key_id, doc.get("device_id"))

    def list(self) -> list[dict]:
        """Every key without its hash and salt, oldest first."""
        return list(self._keys.find({}, {"hash": 0, "salt": 0}).sort("created_at", 1))

    def revoke(self, key_id: str) -> bool:
        return self._keys.update_one({"_id": key_id}, {"$set": {"revoked": True}}).matched_count == 1


def _hash(secret: str, salt: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()
