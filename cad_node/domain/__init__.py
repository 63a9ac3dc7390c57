"""Frozen domain objects shared by every stage; imports no framework."""

from cad_node.domain.findings import Finding, FindingType, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.imaging import ImageVolume
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState

__all__ = [
    "DeliveryState",
    "Finding",
    "FindingType",
    "ImageVolume",
    "JobState",
    "MaskBox",
    "ModelIdentity",
    "ModelResult",
    "ResultKind",
    "SeriesState",
]
