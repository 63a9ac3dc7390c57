"""TID 1500 Measurement Report (Comprehensive 3D SR, PS3.3 A.35.13) of a model's findings.

Per finding, a TID 1410 planar ROI group that viewers can draw (OHIF needs a
2D SCOORD, a Tracking UID per group and an Image Library): a CIRCLE on the CT
slice through the finding's centre, with diameter, volume and certainty.  When
the SEG is given, a TID 1411 volumetric group with the same Tracking UID
references the finding's segment: TID 1410 allows either an image region or a
segment reference, not both, and OHIF merges groups by Tracking UID.  A report
without findings holds one TID 1501 group saying "Nodule: Absent".  On a volume read
from one multi-frame image the SCOORD names the frame (ReferencedFrameNumber,
PS3.3 C.18.4).
"""

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.coding import Code

from cad_node.domain import Finding, ImageVolume, ModelIdentity, ModelResult
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.seg import segment_label
from cad_node.results.sources import (
    build_errors_translated,
    distinct_sources,
    frame_header,
    header_copy,
    keep_character_set,
    outside_highdicom_character_sets,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
    sources_by_slice,
)
from cad_node.results.uids import ResultUids, device_observer_uid

NO_FINDING_TRACKING_IDENTIFIER = "No nodule found"

_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """PS3.16 TID 4019; the parameters carry the weights hash and "NOT FOR CLINICAL USE"."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[model.parameters],
        family=codes.ALGORITHM_FAMILY,
    )


def observation_context(options: ResultOptions) -> hd.sr.ObservationContext:
    """PS3.16 TID 1002 with a device observer (TID 1004) naming cad-node."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(options.manufacturer_model_name, options.device_serial_number),
        name=codes.DEVICE_OBSERVER_NAME,
        manufacturer_name=options.manufacturer,
        model_name=options.manufacturer_model_name,
        serial_number=options.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
            observer_identifying_attributes=device,
        )
    )


def centre_slice(finding: Finding) -> int:
    """The volume slice the finding's SCOORD lies on: the mask slice nearest its centre."""
    k0 = finding.mask.offset[0]
    occupied = k0 + np.flatnonzero(finding.mask.mask.any(axis=(1, 2)))
    nearest = np.argmin(np.abs(occupied - finding.centre_index[0]))
    return int(occupied[nearest])


def _circle(finding: Finding, k: int, volume: ImageVolume) -> npt.NDArray[np.float64]:
    """CIRCLE graphic data (PS3.3 C.18.6.1.2): centre, then a point on the perimeter.

    Image coordinates are (column, row) with (0.5, 0.5) the centre of the first
    pixel (PS3.3 C.10.5.1.2); the radius is that of the circle with the area the
    mask covers on slice ``k``.
    """
    _, row_spacing, column_spacing = volume.spacing_mm
    area_mm2 = (
        float(finding.mask.mask[k - finding.mask.offset[0]].sum()) * row_spacing * column_spacing
    )
    radius_columns = math.sqrt(area_mm2 / math.pi) / column_spacing
    x = finding.centre_index[2] + 0.5
    y = finding.centre_index[1] + 0.5
    return np.array([[x, y], [x + radius_columns, y]], dtype=np.float64)


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    """Diameter (mm), volume (mm3) and certainty (%) with UCUM units (PS3.16 TID 300)."""
    return [
        hd.sr.Measurement(
            name=codes.DIAMETER, value=round(finding.diameter_mm, 2), unit=codes.MILLIMETER
        ),
        hd.sr.Measurement(
            name=codes.VOLUME, value=round(finding.volume_mm3, 2), unit=codes.CUBIC_MILLIMETER
        ),
        hd.sr.Measurement(
            name=codes.CERTAINTY_OF_FINDING,
            value=round(100.0 * finding.probability, 2),
            unit=codes.PERCENT,
        ),
    ]


def _planar_group(
    *,
    finding: Finding,
    source: Dataset,
    volume: ImageVolume,
    k: int,
    tracking: hd.sr.TrackingIdentifier,
    model: ModelIdentity,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1410 with a 2D SCOORD on the slice through the finding's centre."""
    _, frame_number = volume.source_frame(k)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=_circle(finding, k, volume),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=None if frame_number is None else [frame_number],
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=codes.finding_type_code(finding.finding_type),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=algorithm_identification(model),
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        measurements=_measurements(finding),
    )


def _segment_number(seg: Dataset, tracking_uid: str) -> int:
    for item in seg.SegmentSequence:
        if item.get("TrackingUID") == tracking_uid:
            return int(item.SegmentNumber)
    raise ValueError(f"the SEG has no segment with Tracking UID {tracking_uid}")


def _volumetric_group(
    *,
    finding: Finding,
    seg: Dataset,
    volume: ImageVolume,
    tracking: hd.sr.TrackingIdentifier,
    tracking_uid: str,
    model: ModelIdentity,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1411 referencing the finding's segment (matched by Tracking UID)."""
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=_segment_number(seg, tracking_uid),
        source_series=hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=segment,
        finding_type=codes.finding_type_code(finding.finding_type),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=algorithm_identification(model),
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
    )


def _finding_groups(
    result: ModelResult,
    sources: Sequence[Dataset],
    volume: ImageVolume,
    seg: Dataset | None,
    uids: ResultUids,
) -> list[_Group]:
    groups: list[_Group] = []
    for index, finding in enumerate(result.findings):
        tracking_uid = uids.tracking_uid(index)
        tracking = hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=segment_label(finding, index)
        )
        k = centre_slice(finding)
        groups.append(
            _planar_group(
                finding=finding,
                source=sources[k],
                volume=volume,
                k=k,
                tracking=tracking,
                model=result.model,
            )
        )
        if seg is not None:
            groups.append(
                _volumetric_group(
                    finding=finding,
                    seg=seg,
                    volume=volume,
                    tracking=tracking,
                    tracking_uid=tracking_uid,
                    model=result.model,
                )
            )
    return groups


def _image_library_slices(result: ModelResult, volume: ImageVolume) -> list[int]:
    """Slices listed in the Image Library (PS3.16 TID 1600): those the SCOORDs are drawn on.

    TID 1500 requires the library and TID 1600 an entry, so a report without
    findings lists the middle slice.  Listing every slice would cost seconds
    and a megabyte for a 300-slice CT.
    """
    drawn_on = {centre_slice(finding) for finding in result.findings}
    return sorted(drawn_on) or [volume.shape[0] // 2]


def _image_library(
    sources: Sequence[Dataset], volume: ImageVolume, slices: Sequence[int]
) -> list[Dataset]:
    """The images of the Image Library, once each.  A multi-frame image is described by
    the first of ``slices`` (PS3.16 TID 1602 has one entry per image, not per frame)."""
    if volume.frame_numbers is None:
        return [sources[k] for k in slices]
    return [frame_header(sources[slices[0]], volume, slices[0])]


def _no_finding_group(
    result: ModelResult, uids: ResultUids
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1501: TID 1500 needs a group; this one answers "Nodule: Absent"."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.summary_tracking_uid, identifier=NO_FINDING_TRACKING_IDENTIFIER
        ),
        algorithm_id=algorithm_identification(result.model),
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.NODULE, value=codes.ABSENT)
        ],
    )


def build_sr(  # noqa: PLR0917  # positional order agreed with the worker's caller
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    seg: Dataset | None,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``result`` (PS3.16 TID 1500).

    Parameters
    ----------
    source_images
        The series' instances, headers suffice; not modified.  They all go into
        the Current Requested Procedure Evidence; the Image Library (TID 1600)
        lists the slices the SCOORDs are drawn on (the middle slice if none).
    volume
        The volume the model ran on.
    result
        What the model found; no finding still makes a valid report.
    seg
        The SEG built from the same result (``build_seg``), referenced per
        finding; ``None`` when there is none.
    uids
        The job's UIDs; group ``i`` gets ``uids.tracking_uid(i)``.
    options
        Series number, description, equipment and content date/time (set it
        with ``options.at(job_time)`` so a rebuilt object is byte-identical).
    predecessors
        Earlier SRs of this series (a re-run after a late image), listed in the
        Predecessor Documents Sequence (PS3.3 C.17.2.3).

    Raises
    ------
    ResultBuildError
        When the inputs cannot make a valid SR.
    """
    with build_errors_translated("SR", uids.job_key):
        sr = _build_sr(
            source_images=source_images,
            volume=volume,
            result=result,
            seg=seg,
            uids=uids,
            options=options,
            predecessors=predecessors,
        )
    keep_character_set(sr, source_images)
    return sr


def _build_sr(
    *,
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    seg: Dataset | None,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset],
) -> hd.sr.Comprehensive3DSR:
    sources = outside_highdicom_character_sets(sources_by_slice(source_images, volume))
    groups = _finding_groups(result, sources, volume, seg, uids) or [
        _no_finding_group(result, uids)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(options),
        procedure_reported=codes.PROCEDURE_CT_CHEST,
        imaging_measurements=groups,
        referenced_images=_image_library(sources, volume, _image_library_slices(result, volume)),
    )
    evidence = [*distinct_sources(sources), *([header_copy(seg)] if seg is not None else [])]
    return comprehensive_3d_sr(
        report, evidence, codes.PROCEDURE_CT_CHEST, uids, options, predecessors
    )


def comprehensive_3d_sr(  # noqa: PLR0917  # the parts of one report, in reading order
    report: hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    procedure: Code,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset],
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding ``report``, with the job's UIDs, equipment and date.

    Shared by the CT and the planar (mammography, fundus) reports; the caller adds
    what only it needs (e.g. a private coding scheme declaration).
    """
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=uids.sr_series_instance_uid,
            series_number=options.sr_series_number,
            sop_instance_uid=uids.sr_sop_instance_uid,
            instance_number=1,
            manufacturer=options.manufacturer,
            is_complete=True,
            institution_name=options.institution_name,
            institutional_department_name=options.institutional_department_name,
            performed_procedure_codes=[procedure],
            previous_versions=[header_copy(p) for p in predecessors] or None,
            series_description=options.sr_series_description,
            manufacturer_model_name=options.manufacturer_model_name,
            software_versions=options.software_versions,
            device_serial_number=options.device_serial_number,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    pin_creation_datetime(sr, when)
    return sr
