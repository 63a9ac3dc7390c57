"""FastAPI dependencies shared by the routers: the node context and a journal session."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cad_node.admin.context import AdminContext

MAX_PAGE = 500
MAX_ID = 2**31 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="the row's id")]
"""A row id in a path; bounded so that no database is asked for an integer it cannot hold."""


def context(request: Request) -> AdminContext:
    node_context: AdminContext = request.app.state.context
    return node_context


Context = Annotated[AdminContext, Depends(context)]


def journal(node: Context) -> Iterator[Session]:
    """A session for one request; a write commits in its own ``begin()`` block."""
    with node.sessions() as session:
        yield session


Journal = Annotated[Session, Depends(journal)]


class Paging(BaseModel):
    limit: int
    offset: int


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="rows to skip")] = 0,
) -> Paging:
    return Paging(limit=limit, offset=offset)


Page = Annotated[Paging, Depends(paging)]


def as_utc(value: datetime | None) -> datetime | None:
    """A filter's time; a time without offset is taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
