"""Authentication dependencies: ``Authorization: Bearer <token>``; 401 without a valid token, 403
when the token's role may not do what was asked."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.global_api.keys import Principal, Role
from services.global_api.service import GlobalModelService

bearer = HTTPBearer(
    auto_error=False,
    description="A device, trainer or admin token from `flead api create-key`, or FLEAD_API_ADMIN_KEY.",
)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_service(request: Request) -> GlobalModelService:
    return request.app.state.service


def authenticated(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    service: GlobalModelService = Depends(get_service),
) -> Principal:
    if credentials is None:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <token>'", CHALLENGE)
    principal = service.keys.authenticate(credentials.credentials)
    if principal is None:
        raise HTTPException(401, "invalid or revoked token", CHALLENGE)
    return principal


def admin(principal: Principal = Depends(authenticated)) -> Principal:
    if principal.role is not Role.ADMIN:
        raise HTTPException(403, f"this endpoint needs an admin token; yours is a {principal.role} token")
    return principal
