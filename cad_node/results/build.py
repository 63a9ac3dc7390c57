"""Every result object of one model run, from its :class:`~cad_node.domain.results.ModelReport`.

The worker's use::

    report = volume_report(volume, result, study_uid)   # or planar_report(image_set, result)
    objects = build_result_objects(datasets, report, result_uids(job_key),
                                   options.at(job_time), predecessors, overlay=..., gsps=...)

The SEGs, the SR, the Parametric Maps and the KOS come from the same builders for every
model; the burned-in overlays and presentation states are built only for destinations
that ask for them.  Every object says "NOT FOR CLINICAL USE".
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

from cad_node.domain import ImageVolume, ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.domain.results import ModelReport, planar_report, volume_report
from cad_node.results.gsps import build_presentation_states
from cad_node.results.kos import build_kos
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import build_explanation_images, build_overlays
from cad_node.results.pmap import build_parametric_maps
from cad_node.results.seg import build_segs
from cad_node.results.sources import (
    build_errors_translated,
    derivation_notes,
    distinct_sources,
    keep_character_set,
    prepared_headers,
)
from cad_node.results.sr import Explanation, build_sr
from cad_node.results.tracking import Tracking, finding_tracking
from cad_node.results.uids import ResultUids


@dataclass(frozen=True, slots=True)
class ResultObjects:
    """The DICOM objects of one model run, ready to write and send."""

    sr: Dataset
    """The TID 1500 Measurement Report."""
    segs: list[Dataset]
    """One SEG of a volume's findings, or one per planar image with findings; none without."""
    parametric_maps: list[Dataset]
    """One Parametric Map per explanation map (float heatmap)."""
    kos: Dataset | None
    """The Key Object Selection of the images with findings; None without findings."""
    explanations: list[Dataset]
    """One Secondary Capture per explanation map, the heatmap blended over its image."""
    overlays: list[Dataset]
    """Burned-in Secondary Captures, one per image with findings (when asked for)."""
    states: list[Dataset]
    """Presentation states drawing the findings on the source images (when asked for)."""
    warnings: tuple[str, ...] = ()
    """What the objects derived from the sources because their senders left it out."""
    tracking: tuple[Tracking, ...] = ()
    """The Tracking UID and identifier the SR (and SEG) gave each finding, in report order."""


def build_result_objects(  # positional order agreed with the worker
    datasets: Sequence[Dataset],
    report: ModelReport,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
    *,
    overlay: bool = False,
    gsps: bool = False,
    kos: bool = True,
) -> ResultObjects:
    """Every result object of ``report``.

    Parameters
    ----------
    datasets
        The source instances, headers suffice; not modified.  Every image of the
        report's grid needs its dataset; others (a localizer) are ignored.
    report
        What the model said, on the images it read.
    uids
        The job's UIDs; the same ``uids``, options and predecessors rebuild identical objects.
    options
        Series numbers and descriptions, equipment and content date/time (set it
        with ``options.at(job_time)``).
    predecessors
        Earlier SRs of the same series and model: the new SR names them (PS3.3 C.17.2.3)
        and a lesion they tracked keeps its Tracking UID.
    overlay, gsps, kos
        Whether to build the burned-in images, the presentation states and the Key Object
        Selection.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid objects.
    """
    with build_errors_translated("result objects", uids.job_key):
        headers = prepared_headers(datasets, report.grid)
        tracking = finding_tracking(report, uids, predecessors)
        segs = build_segs(report, headers, tracking, uids, options)
        maps = build_parametric_maps(report, headers, uids, options)
        images = build_explanation_images(report, headers, uids, options)
        explanations = [
            Explanation(explanation, parametric_map, image)
            for explanation, parametric_map, image in zip(
                report.explanations, maps, images, strict=True
            )
        ]
        sr = build_sr(report, headers, tracking, segs, explanations, uids, options, predecessors)
        selection = build_kos(report, headers, sr, uids, options) if kos else None
        overlays = build_overlays(report, headers, tracking, uids, options) if overlay else []
        states = build_presentation_states(report, headers, tracking, uids, options) if gsps else []
    objects = ResultObjects(
        sr=sr,
        segs=list(segs),
        parametric_maps=list(maps),
        kos=selection,
        explanations=list(images),
        overlays=list(overlays),
        states=list(states),
        warnings=tuple(derivation_notes(datasets, distinct_sources(headers))),
        tracking=tuple(tracking),
    )
    for built in _all(objects):
        keep_character_set(built, datasets)
    return objects


def _all(objects: ResultObjects) -> list[Dataset]:
    kos = [objects.kos] if objects.kos is not None else []
    return [
        objects.sr,
        *objects.segs,
        *objects.parametric_maps,
        *kos,
        *objects.explanations,
        *objects.overlays,
        *objects.states,
    ]


# --- the shipped model kinds, one call each ----------------------------------------------------


def study_of(datasets: Sequence[Dataset], volume: ImageVolume) -> str:
    """The Study Instance UID of a volume's source images."""
    for dataset in datasets:
        if str(dataset.get("SOPInstanceUID", "")) in volume.sop_instance_uids:
            return str(dataset.StudyInstanceUID)
    raise ValueError("no source image of the volume")


def build_volume_objects(  # noqa: PLR0917  # as build_result_objects
    datasets: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
    *,
    overlay: bool = False,
    gsps: bool = False,
) -> ResultObjects:
    """:func:`build_result_objects` of a volume model's result (a lung CT)."""
    with build_errors_translated("result objects", uids.job_key):
        report = volume_report(volume, result, study_of(datasets, volume))
    return build_result_objects(
        datasets, report, uids, options, predecessors, overlay=overlay, gsps=gsps
    )


def build_planar_objects(  # noqa: PLR0917  # as build_result_objects
    datasets: Sequence[Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
    *,
    overlay: bool = False,
    gsps: bool = False,
) -> ResultObjects:
    """:func:`build_result_objects` of a planar model's result (mammography, fundus)."""
    with build_errors_translated("result objects", uids.job_key):
        report = planar_report(image_set, result)
    return build_result_objects(
        datasets, report, uids, options, predecessors, overlay=overlay, gsps=gsps
    )
