"""The SR of a model that did not assess its input: NOT ASSESSED, and why.

When an image set lies outside a model's validated domain, or its out-of-distribution
score exceeds the model's threshold (:mod:`cad_node.domain.abstention`), the node still
answers, so that no one waits for results that will never come: one Comprehensive 3D SR
(TID 1500 Measurement Report, as the model's normal SR) holding

- the same observation context (cad-node as the device observer), procedure reported,
  series description ("NOT FOR CLINICAL USE") and algorithm equipment as a normal SR;
- the evidence (Current Requested Procedure Evidence Sequence) listing every source instance
  read, and an Image Library (TID 1600) describing each of them (for more than
  :data:`LIBRARY_IMAGES_MAX`, a CT series, the middle image of each series);
- no Imaging Measurements, no finding: the TID 1500 "Qualitative Evaluations" container
  (:mod:`cad_node.results.evaluations`) says "Image set assessment: Not Evaluated" with
  the coded reason, a comment giving the details in words and, when the model computed
  one, the out-of-distribution score with its threshold.

No SEG, Parametric Map, Key Object Selection, overlay or presentation state is made.
"""

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from cad_node.domain.abstention import Abstention
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.results import family_context
from cad_node.results import codes
from cad_node.results.build import ResultObjects
from cad_node.results.evaluations import domain_evaluations
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    build_errors_translated,
    complete_planar_header,
    distinct_sources,
    fill_patient_and_study_type_2,
    header_copy,
    keep_character_set,
    name_default_repertoire,
    outside_highdicom_character_sets,
)
from cad_node.results.sr import comprehensive_3d_sr, observation_context
from cad_node.results.uids import ResultUids

logger = logging.getLogger(__name__)

LIBRARY_IMAGES_MAX = 32
"""Up to this many source instances, the Image Library lists every one; beyond (a CT series),
the middle image of each series, as a normal SR lists a volume's display slices: describing
each of 300 slices costs tens of seconds and a megabyte.  The evidence lists every one."""

_BASIC_LIBRARY_MODALITY = "OT"
"""The Modality an Image Library entry is described under when the image lacks the geometry
highdicom's modality-specific descriptors read (TID 1603/1604): only its modality, frame
of reference and matrix are then written."""


def _prepared(dataset: Dataset) -> Dataset:
    """A header copy highdicom can build from: Type 2 Patient and Study attributes present,
    the default repertoire named, a planar image's derivable attributes derived."""
    header = fill_patient_and_study_type_2(header_copy(dataset))
    name_default_repertoire(header)
    complete_planar_header(header)
    return header


def _describable(header: Dataset) -> bool:
    """Whether highdicom can describe ``header`` in an Image Library (TID 1601)."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(header)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return False
    return True


def _library_entry(header: Dataset) -> Dataset | None:
    """The header as the Image Library describes it; None for an instance that is no image.

    An image without the geometry its modality's descriptors need (a radiograph without
    Imager Pixel Spacing, an enhanced multi-frame CT whose geometry is per frame) is
    described by its modality, frame of reference and matrix only.
    """
    if _describable(header):
        return header
    basic = header_copy(header)
    basic.Modality = _BASIC_LIBRARY_MODALITY
    return basic if _describable(basic) else None


def _library_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """Every source, or, beyond :data:`LIBRARY_IMAGES_MAX`, the middle one of each series."""
    if len(sources) <= LIBRARY_IMAGES_MAX:
        return list(sources)
    series: dict[str, list[Dataset]] = {}
    for source in sources:
        series.setdefault(str(source.get("SeriesInstanceUID", "")), []).append(source)
    return [images[len(images) // 2] for images in series.values()]


def library_images(headers: Sequence[Dataset]) -> list[Dataset]:
    """The Image Library's entries (module docstring), each image once."""
    entries = (_library_entry(header) for header in _library_sources(distinct_sources(headers)))
    return [entry for entry in entries if entry is not None]


def _root_content(
    headers: Sequence[Dataset],
    model: ModelIdentity,
    abstention: Abstention,
    options: ResultOptions,
    procedure: hd.sr.CodedConcept,
) -> hd.sr.ContainerContentItem:
    """The TID 1500 root: language, observation context, procedure, Image Library, and the
    Qualitative Evaluations saying the image set was not assessed."""
    root = hd.sr.ContainerContentItem(
        name=pydicom_codes.cid7021.ImagingMeasurementReport, template_id="1500"
    )
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    content.extend(observation_context(options))
    content.append(
        hd.sr.CodeContentItem(
            name=pydicom_codes.DCM.ProcedureReported,
            value=procedure,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    library = library_images(headers)
    if library:
        content.extend(hd.sr.ImageLibrary(library))
    evaluations = domain_evaluations(model, abstention, abstention.ood, assessed=False)
    if evaluations is None:  # pragma: no cover  # an abstention always says why
        raise ValueError("an abstention without evaluations")
    content.append(evaluations)
    root.ContentSequence = content
    return root


def build_abstention_objects(  # noqa: PLR0917  # positional order as build_result_objects
    datasets: Sequence[Dataset],
    model: ModelIdentity,
    abstention: Abstention,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
) -> ResultObjects:
    """The result objects of a model that abstained: the NOT ASSESSED SR alone.

    Parameters
    ----------
    datasets
        The source instances the node received for the job (headers suffice; Pixel Data
        is not read and the datasets are not modified): every one is referenced.
    model
        The model that abstained, identified as in its normal SRs.
    abstention
        Why: the reason, the details in words, the OOD score when there is one.
    uids, options, predecessors
        As :func:`~cad_node.results.build.build_result_objects`: the same inputs rebuild the
        identical SR (set the content date/time with ``options.at(job_time)``).

    Raises
    ------
    ResultBuildError
        When the datasets cannot make a valid SR (none given, no SOP Instance UID ...).
    """
    with build_errors_translated("abstention SR", uids.job_key):
        if not datasets:
            raise ValueError("an abstention SR references the images read: none given")
        headers = outside_highdicom_character_sets([_prepared(ds) for ds in datasets])
        procedure = codes.procedure_code(family_context(model.family)[1])
        root = _root_content(
            headers, model, abstention, options, hd.sr.CodedConcept.from_code(procedure)
        )
        sr = comprehensive_3d_sr(
            root, distinct_sources(headers), procedure, model, uids, options, predecessors
        )
    keep_character_set(sr, datasets)
    logger.info(
        "job %s: abstention SR %s (%s, %d source instances)",
        uids.job_key,
        uids.sr_sop_instance_uid,
        abstention.reason.value,
        len(distinct_sources(headers)),
    )
    return ResultObjects(
        sr=sr,
        segs=[],
        parametric_maps=[],
        kos=None,
        explanations=[],
        overlays=[],
        states=[],
    )
