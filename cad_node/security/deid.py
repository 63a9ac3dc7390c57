"""De-identification before a ``remote`` model, and re-identification of what it returns.

A model whose manifest says ``remote: true`` runs (or sends data) outside the
hospital's trust boundary. Before it sees a job, the job's datasets are
de-identified with the Basic Application Level Confidentiality Profile (PS3.15
Annex E, Table E.1-1): the action table is the one ``dicom-anonymizer``
(KitwareMedical) transcribes from the standard, edition 2026c. This module adds
what that library leaves open:

- every UID the profile replaces (U, and D/Z/X variants on UI elements) gets a
  fresh pseudonym from one per-job :class:`UidPseudonyms`, so references stay
  consistent inside the job and nothing is kept in the library's process-wide map;
- the profile is applied inside sequences too (PS3.15 E.1.1: attributes are
  handled wherever they are nested), and the X/Z/U* sequences (Referenced and
  Source Image Sequence) keep their items with pseudonymised instance UIDs;
- the de-identified copies carry Patient Identity Removed, De-identification
  Method (Code Sequence: DCM 113100) and Longitudinal Temporal Information
  Modified (PS3.15 E.1.1 item 6); the originals are never changed.

The :class:`ReidentificationMap` (pseudonym -> original UID) stays on the node:
:func:`write_reidentification_map` writes it atomically with mode 0600. The
model's result is mapped back with it, so the SEG, SR and overlays are built
against the original images, under the original patient and study.
"""

import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dicomanonymizer import simpledicomanonymizer as profile  # type: ignore[import-untyped]  # no py.typed
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

from cad_node.domain.findings import ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarImage, PlanarResult
from cad_node.domain.imaging import ImageVolume
from cad_node.errors import CadNodeError, StorageError

PROFILE_TABLE = "dicomfields_2026c"
"""The edition of PS3.15 Table E.1-1 that ``dicom-anonymizer`` transcribes."""
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile (table 2026c), cad-node"
"""De-identification Method (0012,0063), an LO of at most 64 characters."""
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
"""PS3.16 CID 7050: the De-identification Method Code Sequence item of the Basic Profile."""

Action = Callable[[Dataset, Any], None]
TableTag = tuple[int, ...]


class DeidentificationError(CadNodeError):
    """A job cannot be de-identified, or a remote model's answer cannot be re-identified."""


@dataclass(frozen=True, slots=True)
class ReidentificationMap:
    """Pseudonym UID -> original UID for one job; kept by the node, never sent."""

    originals: Mapping[str, str]

    def original(self, pseudonym: str) -> str:
        """The original UID of ``pseudonym``.

        Raises
        ------
        DeidentificationError
            ``pseudonym`` was never handed out: the model refers to an image it was not sent.
        """
        try:
            return self.originals[pseudonym]
        except KeyError:
            raise DeidentificationError(
                f"the remote model's result names UID {pseudonym}, which the node never sent"
            ) from None

    def originals_of(self, pseudonyms: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.original(uid) for uid in pseudonyms)


class UidPseudonyms:
    """One fresh UID per original UID, for the datasets of one job (PS3.15 E.1.1 item 4)."""

    def __init__(self) -> None:
        self._pseudonyms: dict[str, str] = {}
        self._originals: dict[str, str] = {}

    def pseudonym(self, uid: str) -> str:
        """The pseudonym of ``uid``; a pseudonym comes back unchanged (met twice by the profile)."""
        if not uid or uid in self._originals:
            return uid
        if uid not in self._pseudonyms:
            new_uid = str(generate_uid(prefix=None))  # 2.25.<random UUID>: reveals nothing
            self._pseudonyms[uid] = new_uid
            self._originals[new_uid] = uid
        return self._pseudonyms[uid]

    def replace_in(self, element: DataElement) -> None:
        """Replace the UID value(s) of ``element`` (a UI element, single or multi-valued)."""
        if element.VM > 1:
            element.value = [self.pseudonym(str(uid)) for uid in element.value]
        elif element.value:
            element.value = self.pseudonym(str(element.value))

    def reidentification_map(self) -> ReidentificationMap:
        return ReidentificationMap(dict(self._originals))


@dataclass(frozen=True, slots=True)
class DeidentifiedJob:
    """The de-identified copies of a job's datasets and the map back to the originals."""

    datasets: tuple[Dataset, ...]
    reidentification: ReidentificationMap
    pseudonyms: UidPseudonyms


@runtime_checkable
class ReadsDeidentifiedDatasets(Protocol):
    """A remote model that forwards DICOM (e.g. to a vendor's service).

    It receives the job's de-identified datasets before ``predict``; a model
    without this method sees only the volume or image set, under pseudonym UIDs.
    """

    def receive_datasets(self, datasets: Sequence[Dataset]) -> None: ...


def deidentify(datasets: Sequence[Dataset]) -> DeidentifiedJob:
    """De-identified copies of ``datasets`` (the originals are left as they are).

    Raises
    ------
    DeidentificationError
        An image says it has burned-in annotation: the Basic Profile without the
        Clean Pixel Data Option (PS3.15 E.3.1) may not release it.
    """
    pseudonyms = UidPseudonyms()
    copies = tuple(_deidentified_copy(dataset, pseudonyms) for dataset in datasets)
    return DeidentifiedJob(copies, pseudonyms.reidentification_map(), pseudonyms)


def _deidentified_copy(dataset: Dataset, pseudonyms: UidPseudonyms) -> Dataset:
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationError(
            f"SOP Instance {dataset.get('SOPInstanceUID', '?')} has burned-in annotation; "
            "it cannot be sent to a remote model (no Clean Pixel Data Option)"
        )
    # Pixel Data is bytes (immutable): deepcopy shares it rather than copying it.
    result = copy.deepcopy(dataset)
    _apply_profile(result, _actions(pseudonyms))
    _mark_deidentified(result)
    if hasattr(dataset, "file_meta"):
        result.file_meta = _deidentified_file_meta(dataset.file_meta, result)
    return result


def _deidentified_file_meta(original: FileMetaDataset, dataset: Dataset) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) naming the pseudonym, and no sending or receiving AE."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", original.MediaStorageSOPClassUID)
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = original.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _apply_profile(dataset: Dataset, actions: Mapping[TableTag, Action]) -> None:
    """Table E.1-1 on ``dataset``, then on the items of every sequence the table keeps."""
    profile.anonymize_dataset(
        dataset,
        extra_anonymization_rules=None,
        delete_private_tags=True,
        base_rules_gen=lambda: dict(actions),
    )
    for element in list(dataset):
        if element.VR == "SQ" and _table_key(element.tag) not in actions:
            for item in element.value:
                _apply_profile(item, actions)


def _actions(pseudonyms: UidPseudonyms) -> dict[TableTag, Action]:
    """The library's action per tag, with UID replacement and sequences done per job."""
    actions: dict[TableTag, Action] = dict(_table())
    for tag, action in _table().items():
        if len(tag) != 2 or action in _REMOVING_ACTIONS:
            continue
        vr = _vr_of(tag)
        if vr == "UI":
            actions[tag] = _replace_uid(pseudonyms)
        elif vr == "SQ" and action is profile.delete_or_empty_or_replace_UID:
            actions[tag] = _profile_in_items(actions)
        elif vr == "SQ":
            actions[tag] = _dummy_items(pseudonyms)
    return actions


_REMOVING_ACTIONS: tuple[Action, ...] = (
    profile.delete,
    profile.empty,
    profile.delete_or_empty,
    profile.keep,
)


@cache
def _table() -> Mapping[TableTag, Action]:
    """PS3.15 Table E.1-1 as ``dicom-anonymizer`` transcribes it: tag -> action."""
    actions: dict[TableTag, Action] = profile.initialize_actions(PROFILE_TABLE)
    return actions


def _vr_of(tag: TableTag) -> str:
    try:
        return str(dictionary_VR(Tag(tag[0], tag[1])))
    except KeyError:
        return ""


def _table_key(tag: BaseTag) -> TableTag:
    return (tag.group, tag.element)


def _replace_uid(pseudonyms: UidPseudonyms) -> Action:
    """U (and D on a UI element): a pseudonym consistent across the job's instances."""

    def action(dataset: Dataset, tag: Any) -> None:
        element = dataset.get(tag)
        if element is not None and element.VR == "UI":
            pseudonyms.replace_in(element)

    return action


def _profile_in_items(actions: Mapping[TableTag, Action]) -> Action:
    """X/Z/U*: keep the sequence; inside each item, the profile replaces instance UIDs."""

    def action(dataset: Dataset, tag: Any) -> None:
        element = dataset.get(tag)
        if element is not None and element.VR == "SQ":
            for item in element.value:
                _apply_profile(item, actions)

    return action


def _dummy_items(pseudonyms: UidPseudonyms) -> Action:
    """D on a sequence: every value inside replaced by a dummy; UIDs by their pseudonyms."""

    def action(dataset: Dataset, tag: Any) -> None:
        element = dataset.get(tag)
        if element is not None and element.VR == "SQ":
            _replace_item_values(element.value, pseudonyms)

    return action


def _replace_item_values(items: DicomSequence, pseudonyms: UidPseudonyms) -> None:
    for item in items:
        for element in item:
            if element.VR == "UI":
                pseudonyms.replace_in(element)
            elif element.VR == "SQ":
                _replace_item_values(element.value, pseudonyms)
            else:
                profile.replace_element(element)


def _mark_deidentified(dataset: Dataset) -> None:
    """PS3.15 E.1.1 items 6-7 and PS3.3 C.7.1.1: say what was done to what leaves.

    A method an earlier de-identification recorded is kept, ours is added after it.
    """
    dataset.PatientIdentityRemoved = "YES"
    methods = _values(dataset.get("DeidentificationMethod"))
    dataset.DeidentificationMethod = [*methods, DEIDENTIFICATION_METHOD]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    codes = list(dataset.get("DeidentificationMethodCodeSequence", []))
    dataset.DeidentificationMethodCodeSequence = [*codes, code]
    dataset.LongitudinalTemporalInformationModified = "REMOVED"


def _values(value: object) -> list[str]:
    """The values of a string element that may be absent, empty or multi-valued."""
    if isinstance(value, MultiValue):
        return [str(item) for item in value if item]
    return [str(value)] if value else []


# -- the model's input and output ------------------------------------------------------------


def pseudonymised_volume(volume: ImageVolume, pseudonyms: UidPseudonyms) -> ImageVolume:
    """``volume`` under the UIDs of the de-identified datasets (pixels and geometry unchanged)."""
    return replace(
        volume,
        sop_instance_uids=tuple(pseudonyms.pseudonym(uid) for uid in volume.sop_instance_uids),
        series_instance_uid=pseudonyms.pseudonym(volume.series_instance_uid),
        frame_of_reference_uid=pseudonyms.pseudonym(volume.frame_of_reference_uid),
    )


def pseudonymised_image_set(images: ImageSet, pseudonyms: UidPseudonyms) -> ImageSet:
    """``images`` under the UIDs of the de-identified datasets."""
    return replace(
        images,
        study_instance_uid=pseudonyms.pseudonym(images.study_instance_uid),
        images=tuple(_pseudonymised_image(image, pseudonyms) for image in images.images),
    )


def _pseudonymised_image(image: PlanarImage, pseudonyms: UidPseudonyms) -> PlanarImage:
    frame_of_reference_uid = image.frame_of_reference_uid
    return replace(
        image,
        sop_instance_uid=pseudonyms.pseudonym(image.sop_instance_uid),
        series_instance_uid=pseudonyms.pseudonym(image.series_instance_uid),
        frame_of_reference_uid=(
            None if frame_of_reference_uid is None else pseudonyms.pseudonym(frame_of_reference_uid)
        ),
    )


def reidentified_result(result: ModelResult, uids: ReidentificationMap) -> ModelResult:
    """A volume model's result under the original Series Instance UID."""
    return replace(result, series_instance_uid=uids.original(result.series_instance_uid))


def reidentified_planar_result(result: PlanarResult, uids: ReidentificationMap) -> PlanarResult:
    """An image-set model's result with every image reference mapped to the original UID."""
    return replace(
        result,
        study_instance_uid=uids.original(result.study_instance_uid),
        findings=tuple(
            replace(f, sop_instance_uid=uids.original(f.sop_instance_uid)) for f in result.findings
        ),
        assessments=tuple(
            replace(a, sop_instance_uids=uids.originals_of(a.sop_instance_uids))
            for a in result.assessments
        ),
        explanations=tuple(
            replace(e, sop_instance_uid=uids.original(e.sop_instance_uid))
            for e in result.explanations
        ),
    )


# -- the map on disk ---------------------------------------------------------------------------


def write_reidentification_map(uids: ReidentificationMap, path: Path) -> None:
    """Write ``uids`` as JSON at ``path``: whole or absent, readable by the node's user only.

    Raises
    ------
    StorageError
        The file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps({"pseudonym_to_original": dict(uids.originals)}, indent=1, sort_keys=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise StorageError(
            f"cannot write the re-identification map {path}: {exc.strerror}"
        ) from exc


def read_reidentification_map(path: Path) -> ReidentificationMap:
    """The map :func:`write_reidentification_map` wrote at ``path``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return ReidentificationMap(dict(data["pseudonym_to_original"]))
