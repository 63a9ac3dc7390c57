"""The Key Object Selection Document (PS3.3 A.35.4) of a job's findings, built with highdicom.

IHE AI Results (AIR): beside the SR, the Evidence Creator may flag the images worth a
look, so that a PACS or viewer that shows key images opens them first.  One document
per job with findings (PS3.16 TID 2010): titled DCM 113000 "Of Interest" (CID 7010),
a Key Object Description saying the selection is a CAD's and not for clinical use,
the Device observer, then each finding's display image
(:attr:`~cad_node.domain.results.RegionFinding.display_image`; a frame of a
multi-frame image by its Referenced Frame Number, PS3.3 C.18.4) and the SR.
"""

import datetime
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.results import ModelReport, images_with_findings
from cad_node.results import codes
from cad_node.results.algorithm import add_algorithm_equipment
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.sr import device_observer
from cad_node.results.uids import ResultUids

KOS_DESCRIPTION = f"CAD findings, {NOT_FOR_CLINICAL_USE}"
"""Key Object Description (DCM 113012) of every document."""


def selected_frames(report: ModelReport) -> dict[str, list[int] | None]:
    """SOP Instance UID -> frame numbers (None: the whole instance) of the images with
    findings, in grid order."""
    frames: dict[str, list[int]] = {}
    for index in images_with_findings(report):
        uid, frame = report.grid.images[index].reference
        frames.setdefault(uid, []).extend([] if frame is None else [frame])
    return {uid: numbers or None for uid, numbers in frames.items()}


def selected_headers(headers: Sequence[Dataset], uids: Sequence[str]) -> list[Dataset]:
    """The prepared header of each instance in ``uids``, in that order."""
    by_uid = {str(header.SOPInstanceUID): header for header in headers}
    return [by_uid[uid] for uid in uids]


def settle_references(kos: Dataset, frames: dict[str, list[int] | None]) -> None:
    """Make highdicom's IMAGE and COMPOSITE items what PS3.16 TID 2010 rows 8 to 10 say.

    - The rows name no concept: highdicom's generic "Source" (SCT 260753009) goes, as
      PixelMed's DicomSRValidator requires.
    - The selected frames of a multi-frame image are named (Referenced Frame Number,
      PS3.3 C.18.4); highdicom references whole instances only.
    """
    for item in kos.ContentSequence:
        if item.ValueType not in {"IMAGE", "COMPOSITE"}:
            continue
        if "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
        for sop in item.ReferencedSOPSequence:
            numbers = frames.get(str(sop.ReferencedSOPInstanceUID))
            if numbers is not None:
                sop.ReferencedFrameNumber = numbers if len(numbers) > 1 else numbers[0]


def build_kos(
    report: ModelReport,
    headers: Sequence[Dataset],
    sr: Dataset,
    uids: ResultUids,
    options: ResultOptions,
) -> Dataset | None:
    """The Key Object Selection of the images with findings and the SR; None without findings.

    Parameters
    ----------
    report
        What the model said.
    headers
        Prepared source headers, ``headers[j]`` of grid image ``j``
        (:func:`~cad_node.results.sources.prepared_headers`).
    sr
        The job's TID 1500 SR, listed after the images.
    uids, options
        The job's UIDs and the installation's series number, description and date/time
        (set with ``options.at(job_time)`` so a rebuild is byte-identical).
    """
    if not report.findings:
        return None
    frames = selected_frames(report)
    images = selected_headers(headers, list(frames))
    when = resolve_content_datetime(options.content_datetime)
    content = hd.ko.KeyObjectSelection(
        document_title=codes.OF_INTEREST,
        referenced_objects=[*images, sr],
        observer_device_context=device_observer(options),
        description=KOS_DESCRIPTION,
    )
    with patient_names_kept_out_of_logs():
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=[*images, sr],
            content=content,
            series_instance_uid=uids.kos_series_instance_uid,
            series_number=options.kos_series_number,
            sop_instance_uid=uids.kos_sop_instance_uid,
            instance_number=1,
            **options.equipment_arguments(),
            series_description=options.kos_series_description,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    settle_references(kos, frames)
    _finish(kos, report, options, when)
    return kos


def _finish(
    dataset: Dataset, report: ModelReport, options: ResultOptions, when: datetime.datetime
) -> None:
    add_algorithm_equipment(dataset, report.model, options.manufacturer, when)
    pin_creation_datetime(dataset, when)
