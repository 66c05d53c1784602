"""Every error is JSON ``{"error": "<what went wrong>"}`` with a fitting status; bad input is a 4xx,
never a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from flead.federated import UpdateRefused
from services.global_api.aggregation import AggregationBusy
from services.global_api.anomaly_pages import PageError
from services.global_api.codec import UpdateFormatError

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: dict | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:10])
        return error_response(422, f"invalid request: {summary}", details=details)

    @app.exception_handler(UpdateRefused)
    async def refused(request: Request, exc: UpdateRefused) -> JSONResponse:
        return error_response(422, exc.reason)

    @app.exception_handler(UpdateFormatError)
    async def malformed(request: Request, exc: UpdateFormatError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(PageError)
    async def bad_page(request: Request, exc: PageError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(AggregationBusy)
    async def busy(request: Request, exc: AggregationBusy) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(PyMongoError)
    async def database_error(request: Request, exc: PyMongoError) -> JSONResponse:
        log.exception("MongoDB error on %s %s", request.method, request.url.path)
        return error_response(503, f"the database is unavailable: {type(exc).__name__}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (logged on the server)")
