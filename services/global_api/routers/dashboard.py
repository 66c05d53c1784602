"""The dashboard page and its static files (no CDN: Plotly comes from the installed package)."""

from __future__ import annotations

from functools import cache
from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse, Response

from services.global_api.auth import get_service
from services.global_api.dashboard_assets import DASHBOARD_CSS, DASHBOARD_JS
from services.global_api.dashboard_page import render_dashboard
from services.global_api.service import GlobalModelService

router = APIRouter(include_in_schema=False)
STATIC_CACHE = {"Cache-Control": "public, max-age=86400"}


@cache
def plotly_js_path() -> Path:
    spec = find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed; the dashboard needs its plotly.min.js")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


@router.get("/", response_class=HTMLResponse)
def dashboard(service: GlobalModelService = Depends(get_service)) -> HTMLResponse:
    return HTMLResponse(render_dashboard(service))


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(plotly_js_path(), media_type="text/javascript", headers=STATIC_CACHE)


@router.get("/static/dashboard.js")
def dashboard_js() -> Response:
    return Response(DASHBOARD_JS, media_type="text/javascript", headers=STATIC_CACHE)


@router.get("/static/dashboard.css")
def dashboard_css() -> Response:
    return Response(DASHBOARD_CSS, media_type="text/css", headers=STATIC_CACHE)
