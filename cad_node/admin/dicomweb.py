"""The node's STOW-RS endpoint: ``POST /dicomweb/studies[/{study}]`` (PS3.18 10.5).

A client with a ``send`` (or ``admin``) token stores instances as it would by C-STORE,
with the Storage SCP's promise: each instance is fsync'd in the spool and its journal
row committed before the response, which lists every instance's outcome in a Store
Instances Response Module (PS3.18 Table 10.5.3-1) as DICOM JSON (PS3.18 F.2):
Referenced SOP Sequence for the stored ones, Failed SOP Sequence with a Failure
Reason (a PS3.4 B.2.3 status) for the others. 200: all stored; 202: some failed;
409: none stored.

The body is read as it arrives (:mod:`cad_node.ingest.multipart`), bounded by
``dicomweb.max_request_bytes`` and ``dicomweb.max_instances``, each instance by
``limits``. A malformed body is answered 400 (a part not ``application/dicom``: 415;
over a bound: 413) with a message saying what is wrong, and nothing is stored.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from cad_node.admin.auth import Principal, Sender
from cad_node.admin.deps import Context
from cad_node.domain.values import check_ae_title
from cad_node.ingest.multipart import (
    MalformedMultipartError,
    MultipartReader,
    boundary_of,
    media_type_parameters,
)
from cad_node.ingest.stow import (
    DICOM_MEDIA_TYPE,
    StowInstance,
    StowReceiver,
    TooManyPartsError,
    UnsupportedPartError,
    is_stored,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
DEFAULT_CALLING_AE_TITLE = "STOW-RS"
"""Recorded as the instances' calling AE title when the token's name is not an AE title."""

StudyUid = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]


@router.post("/dicomweb/studies", response_class=JSONResponse)
async def store_instances(request: Request, node: Context, caller: Sender) -> JSONResponse:
    """STOW-RS: store the instances of a ``multipart/related; type="application/dicom"``
    body (PS3.18 10.5); the Store Instances Response as DICOM JSON."""
    return await _store(request, node, caller, None)


@router.post("/dicomweb/studies/{study}", response_class=JSONResponse)
async def store_study_instances(
    study: StudyUid, request: Request, node: Context, caller: Sender
) -> JSONResponse:
    """STOW-RS into one study: an instance of another study fails (0xA900) and is not kept."""
    return await _store(request, node, caller, study)


async def _store(
    request: Request, node: Context, caller: Principal, study: str | None
) -> JSONResponse:
    if node.stow_service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the node does not store")
    boundary = _boundary(request.headers.get("content-type", ""))
    receiver = StowReceiver(
        node.stow_service,
        calling_ae_title=calling_ae_title(caller),
        address=request.client.host if request.client else "",
        max_instances=node.settings.dicomweb.max_instances,
        study_instance_uid=study,
    )
    try:
        await _read_body(request, MultipartReader(boundary, receiver))
        stored = await run_in_threadpool(receiver.store)
    except TooManyPartsError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(exc)) from None
    except UnsupportedPartError as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail=str(exc)) from None
    except MalformedMultipartError as exc:
        logger.warning("STOW-RS from %s refused (400): %s", caller.name, exc)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    finally:
        receiver.discard()  # whatever was not stored
    _log(caller, stored)
    return JSONResponse(response_module(stored), _http_status(stored), media_type=DICOM_JSON)


def _boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` body of ``application/dicom`` parts (PS3.18
    8.6.1.2); 415 for another media type, 400 without a usable boundary."""
    media_type, parameters = media_type_parameters(content_type)
    part_type = parameters.get("type", DICOM_MEDIA_TYPE).lower()
    if media_type != "multipart/related" or part_type != DICOM_MEDIA_TYPE:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f'send multipart/related; type="{DICOM_MEDIA_TYPE}" (PS3.18 10.5.1), '
            f"not {content_type[:100]!r}",
        )
    try:
        return boundary_of(parameters)
    except MalformedMultipartError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None


async def _read_body(request: Request, reader: MultipartReader) -> None:
    """Feed the body to ``reader`` as it arrives; its writes to the spool run in a thread."""
    async for chunk in request.stream():
        if chunk:
            await run_in_threadpool(reader.feed, chunk)
    reader.close()


def calling_ae_title(caller: Principal) -> str:
    """The token's name when it is an AE title (rules may match it), else ``STOW-RS``."""
    try:
        return check_ae_title(caller.name)
    except ValueError:
        return DEFAULT_CALLING_AE_TITLE


def response_module(instances: list[StowInstance]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON."""
    stored = [_reference(i) for i in instances if is_stored(i)]
    failed = [
        {**_reference(i), "00081197": {"vr": "US", "Value": [i.status]}}
        for i in instances
        if not is_stored(i)
    ]
    module: dict[str, Any] = {}
    if failed:
        module["00081198"] = {"vr": "SQ", "Value": failed}  # Failed SOP Sequence
    if stored:
        module["00081199"] = {"vr": "SQ", "Value": stored}  # Referenced SOP Sequence
    return module


def _reference(instance: StowInstance) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [instance.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [instance.sop_instance_uid]},
    }


def _http_status(instances: list[StowInstance]) -> int:
    """200 all stored, 202 some, 409 none (PS3.18 10.5.3.1)."""
    stored = sum(1 for instance in instances if is_stored(instance))
    if stored == len(instances):
        return status.HTTP_200_OK
    return status.HTTP_202_ACCEPTED if stored else status.HTTP_409_CONFLICT


def _log(caller: Principal, instances: list[StowInstance]) -> None:
    stored = sum(1 for instance in instances if is_stored(instance))
    logger.info(
        "STOW-RS from %s: %d instance(s) stored, %d failed",
        caller.name,
        stored,
        len(instances) - stored,
    )
