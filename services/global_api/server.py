"""Serving the app with uvicorn on the host and port of ``settings.api_url`` (one worker)."""

from __future__ import annotations

from flead.config import Address, Settings


def api_address(settings: Settings) -> Address:
    return Address.parse(settings.api_url)


def serve(settings: Settings | None = None, *, log_level: str = "info") -> None:
    import uvicorn

    from services.global_api.app import create_app

    settings = settings or Settings()
    address = api_address(settings)
    uvicorn.run(create_app(settings), host=address.host, port=address.port, log_level=log_level, workers=1)
