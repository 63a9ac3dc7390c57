"""Bearer-token authentication with four roles: ``read``, ``admin``, ``send`` and ``review``.

Tokens are configured as their sha256 (``admin.tokens``), so the config file
holds no secret. Missing or unknown token: 401; a read token on a write: 403.
A ``send`` token may only store images by STOW-RS (``/dicomweb``): 403 elsewhere.
A ``review`` token (a radiologist) reads what a ``read`` token reads (no patient names,
IDs or accession numbers: those are the admin's) and posts feedback on the models'
findings (``POST /api/feedback``); it changes nothing of the node (rules, destinations,
models, jobs): 403 there.
"""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cad_node.config import AdminToken

_bearer = HTTPBearer(auto_error=False, description="an admin.tokens token")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (the audit log's actor) and role."""

    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"

    @property
    def can_read(self) -> bool:
        return self.role in ("read", "admin", "review")

    @property
    def can_review(self) -> bool:
        """May post feedback on the models' findings (review page, API, CSV)."""
        return self.role in ("review", "admin")

    @property
    def can_send(self) -> bool:
        """May store images by STOW-RS."""
        return self.role in ("send", "admin")


def token_sha256(token: str) -> str:
    """The lower-case hex sha256 of ``token``, as ``admin.tokens[].sha256`` holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def find_principal(tokens: tuple[AdminToken, ...], token: str) -> Principal | None:
    """The holder of ``token``, or ``None``; compared in constant time."""
    digest = token_sha256(token)
    found = None
    for candidate in tokens:
        if hmac.compare_digest(candidate.sha256, digest):
            found = Principal(candidate.name, candidate.role)
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 without a valid token."""
    tokens: tuple[AdminToken, ...] = request.app.state.context.settings.admin.tokens
    if not tokens:
        raise _unauthorized("no admin token is configured (admin.tokens); see the admin guide")
    if credentials is None:
        raise _unauthorized("a bearer token is required")
    found = find_principal(tokens, credentials.credentials)
    if found is None:
        raise _unauthorized("unknown token")
    return found


def reader(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller, if it holds a read or admin token; 403 for a send token."""
    if not caller.can_read:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token may only send images")
    return caller


def sender(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller, if it may store images by STOW-RS (send or admin token); 403 otherwise."""
    if not caller.can_send:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token may not send images")
    return caller


def reviewer(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller, if it may post feedback (review or admin token); 403 otherwise."""
    if not caller.can_review:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="this token may not post feedback (review role)"
        )
    return caller


def writer(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller, if it holds an admin token; 403 for a read token."""
    if not caller.can_write:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token may only read")
    return caller


Reader = Annotated[Principal, Depends(reader)]
Sender = Annotated[Principal, Depends(sender)]
Writer = Annotated[Principal, Depends(writer)]
Reviewer = Annotated[Principal, Depends(reviewer)]
