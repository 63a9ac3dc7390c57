"""The result objects of a planar model run: SEG, SR, burned-in and explanation images.

The worker's use::

    uids = result_uids(job_key)  # stored with the job: a retry rebuilds the same objects
    objects = build_planar_objects(headers, image_set, result, uids, options.at(job_time),
                                   predecessors, overlay=destination_wants_overlays)
    send(*objects.seg, *objects.explanations, *objects.overlays, objects.sr)

Every object is in the study of the image set and says "NOT FOR CLINICAL USE".
A core module: imports highdicom, pydicom, numpy, Pillow and scikit-image,
never a network, database or deep-learning library.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

from cad_node.domain.planar import ImageSet, PlanarResult
from cad_node.results.options import ResultOptions
from cad_node.results.planar_overlay import build_explanation_images, build_planar_overlays
from cad_node.results.planar_seg import build_planar_segs, planar_headers
from cad_node.results.planar_sr import Explanation, build_planar_sr
from cad_node.results.sources import (
    build_errors_translated,
    derivation_notes,
    keep_character_set,
)
from cad_node.results.uids import ResultUids


@dataclass(frozen=True, slots=True)
class PlanarObjects:
    """The DICOM objects of one planar model run, ready to send."""

    seg: list[Dataset]
    """One SEG per source image with findings (highdicom makes one source frame per SEG
    when the images have no patient position); empty without findings."""
    sr: Dataset
    """One TID 1500 Measurement Report for the whole image set."""
    overlays: list[Dataset]
    """One burned-in Secondary Capture per source image with findings (if asked for)."""
    explanations: list[Dataset]
    """One Secondary Capture per explanation map, the heatmap blended over its image."""
    warnings: tuple[str, ...] = ()
    """What the objects derived from the sources because their senders left it out (UIDs
    only): the job records it for the admin."""


def build_planar_objects(  # noqa: PLR0917  # positional order agreed with the worker
    datasets: Sequence[Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
    *,
    overlay: bool,
) -> PlanarObjects:
    """The SEGs, the SR, and the explanation and (if ``overlay``) burned-in images of a result.

    Parameters
    ----------
    datasets
        The source instances, headers suffice (Pixel Data may be removed: the
        pixels drawn come from ``image_set``); not modified.  Every image of the
        set needs its dataset; others are ignored.
    image_set
        The images the model read (``cad_node.imaging.planar.load_image_set``).
    result
        What the model said: findings with masks, assessments, explanation maps.
    uids
        The job's UIDs; the same ``uids`` and options rebuild identical objects.
    options
        Series numbers and descriptions, equipment and content date/time (set
        it with ``options.at(job_time)``).
    predecessors
        Earlier SRs of the same job line, listed in the new SR's Predecessor
        Documents Sequence (PS3.3 C.17.2.3).
    overlay
        Whether to build the burned-in images (for destinations that show no
        SEG or SR).

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid objects.
    """
    with build_errors_translated("planar result objects", uids.job_key):
        if result.study_instance_uid != image_set.study_instance_uid:
            raise ValueError("the result is of another study than the image set")
        headers = planar_headers(datasets, image_set)
        warnings = derivation_notes(datasets, list(headers.values()))
        segs = build_planar_segs(headers, image_set, result, uids, options)
        explanation_images = build_explanation_images(headers, image_set, result, uids, options)
        explanations = [
            Explanation(explanation, image)
            for explanation, image in zip(result.explanations, explanation_images, strict=True)
        ]
        sr = build_planar_sr(
            headers,
            image_set,
            result,
            segs=segs,
            explanations=explanations,
            uids=uids,
            options=options,
            predecessors=predecessors,
        )
        overlays = (
            build_planar_overlays(headers, image_set, result, uids, options) if overlay else []
        )
    for built in (*segs, sr, *overlays, *explanation_images):
        keep_character_set(built, datasets)
    return PlanarObjects(
        seg=list(segs),
        sr=sr,
        overlays=list(overlays),
        explanations=list(explanation_images),
        warnings=tuple(warnings),
    )
