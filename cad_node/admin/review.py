"""Radiologists' feedback (issue 22): the review page's API, POST /api/feedback, CSV outcomes."""

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["feedback"])
