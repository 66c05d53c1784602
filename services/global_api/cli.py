"""`flead api ...`: serve the global model API, create its first version, manage its tokens.

The service lives in ``services.global_api``; it is imported inside the commands, so that loading the
``flead`` command line never pulls in FastAPI.
"""

from __future__ import annotations

from enum import StrEnum

import typer
from pymongo.errors import PyMongoError
from rich.table import Table

from flead.cli.output import console, fail
from flead.config import Settings
from flead.model import ModelConfig
from flead.model.config import model_for_fleet

api_app = typer.Typer(
    help="The global model API: serve it, initialise it, manage its tokens.", no_args_is_help=True
)


class KeyRole(StrEnum):
    device = "device"
    trainer = "trainer"
    admin = "admin"


def _service():
    from services.global_api.service import GlobalModelService

    return GlobalModelService.open(Settings())


@api_app.command("run")
def run(log_level: str = typer.Option("info", help="uvicorn log level.")) -> None:
    """Serve the API (one uvicorn worker) on the host and port of FLEAD_API_URL."""
    from services.global_api.server import api_address, serve

    settings = Settings()
    console.print(f"serving the global model API on http://{api_address(settings)} (dashboard at /)")
    serve(settings, log_level=log_level)


@api_app.command("init")
def init(
    features: str = typer.Option(
        None, help="Comma-separated feature names the model scores (default: the fleet schema's features)."
    ),
    kind: str = typer.Option(ModelConfig().kind, help="autoencoder or forecaster."),
    window: int = typer.Option(ModelConfig().window, help="Readings per input window."),
    hidden: str = typer.Option(",".join(map(str, ModelConfig().hidden)), help="Hidden layer sizes."),
    time_features: bool = typer.Option(
        None,
        help="Feed the time of day to the network (default: when the fleet's readings carry clock times).",
    ),
    seed: int = typer.Option(0, help="Seed of the initial weights."),
) -> None:
    """Create global version 0 with this architecture (else the API's first start creates it with the
    defaults)."""
    try:
        config = model_for_fleet(
            Settings().fleet,
            None if features is None else [f.strip() for f in features.split(",") if f.strip()],
            kind=kind,
            window=window,
            hidden=tuple(int(h) for h in hidden.split(",") if h.strip()),
            **({} if time_features is None else {"time_features": time_features}),
        )
    except ValueError as exc:
        raise fail(f"invalid architecture: {exc}") from None
    service = _service()
    try:
        created = service.initialise(config, seed=seed)
        latest = service.registry.latest()
    except PyMongoError as exc:
        raise fail(f"MongoDB unreachable ({type(exc).__name__}); start it with `flead local up`") from None
    finally:
        service.close()
    if not created:
        raise fail(f"the global model already has versions (latest {latest.version}); nothing changed")
    console.print(f"created version 0: {config.kind}, features {', '.join(config.features)}, seed {seed}")


@api_app.command("create-key")
def create_key(
    role: KeyRole = typer.Option(..., help="device (submits for its own device), trainer or admin."),
    device: str | None = typer.Option(None, help="The device a device key is bound to, e.g. mote-01."),
    name: str | None = typer.Option(None, help="A label to recognise the key by."),
) -> None:
    """Create a token and print it once; only its hash is stored."""
    service = _service()
    try:
        created = service.keys.create(role.value, device_id=device, name=name)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except PyMongoError as exc:
        raise fail(f"MongoDB unreachable ({type(exc).__name__}); start it with `flead local up`") from None
    finally:
        service.close()
    bound = f" for device {created.device_id}" if created.device_id else ""
    console.print(
        f"created {created.role} key {created.key_id}{bound}; the token is shown only now:", highlight=False
    )
    print(created.token)


@api_app.command("list-keys")
def list_keys() -> None:
    """The stored keys (never their tokens)."""
    service = _service()
    try:
        keys = service.keys.list()
    except PyMongoError as exc:
        raise fail(f"MongoDB unreachable ({type(exc).__name__}); start it with `flead local up`") from None
    finally:
        service.close()
    table = Table(title="API keys")
    for column in ("key id", "role", "device", "name", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key["_id"],
            key["role"],
            key.get("device_id") or "-",
            key.get("name") or "-",
            str(key.get("created_at", "-")),
            "yes" if key.get("revoked") else "no",
        )
    console.print(table)


@api_app.command("revoke-key")
def revoke_key(key_id: str = typer.Argument(..., help="The key id (see flead api list-keys).")) -> None:
    """Revoke a key: its token is refused from the next request on."""
    service = _service()
    try:
        revoked = service.keys.revoke(key_id)
    finally:
        service.close()
    if not revoked:
        raise fail(f"no key {key_id!r}")
    console.print(f"revoked key {key_id}")
