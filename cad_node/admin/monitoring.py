"""Each model's local performance and drift: the monitoring page's API and figures (issue 22)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/monitoring", tags=["monitoring"])
