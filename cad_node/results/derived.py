"""What highdicom 0.28 needs of a source image to derive a SEG or Parametric Map from it, and
what it leaves to settle afterwards.

A projection or a photograph (a mammogram, a fundus photograph) places no pixel in the
patient: highdicom then takes exactly one source frame per derived object, and a classic
multi-frame photograph must be shown to it as a one-frame image
(:func:`highdicom_source`), whose frame the object names afterwards
(:func:`reference_source_frame`).
"""

from pydicom import Dataset

from cad_node.results.sources import header_copy


def has_patient_position(header: Dataset) -> bool:
    """Whether the source image places its pixels in a patient Frame of Reference (a CT slice,
    an Enhanced CT); a projection or photograph does not, even with a FrameOfReferenceUID."""
    if "FrameOfReferenceUID" not in header:
        return False
    shared = (header.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    return "ImageOrientationPatient" in header or "PlaneOrientationSequence" in shared


def highdicom_source(header: Dataset, frame_number: int | None = None) -> Dataset:
    """A header of a source without patient position that highdicom takes as one source frame.

    A FrameOfReferenceUID without an Image Plane (a mammogram may have one) would make
    highdicom look for a position: it is left out.  highdicom reads the Pixel Measures of
    a multi-frame IOD from the Shared Functional Groups, which a classic multi-frame
    image such as an Ophthalmic Photography 8 Bit Image (PS3.3 A.39.1) does not have:
    give it one from PixelSpacing, or a 1 mm placeholder.  Of an image of several
    frames, frame ``frame_number`` is shown as a one-frame image.

    Raises
    ------
    ValueError
        For a frame of a multi-frame image without its frame number.
    """
    adapted = header_copy(header)
    if "FrameOfReferenceUID" in adapted:
        del adapted.FrameOfReferenceUID
    if "NumberOfFrames" not in header or "SharedFunctionalGroupsSequence" in header:
        return adapted
    if int(header.NumberOfFrames) != 1 and frame_number is None:
        raise ValueError("a frame of a multi-frame planar source image needs its frame number")
    adapted.NumberOfFrames = 1
    measures = Dataset()
    measures.PixelSpacing = header.get("PixelSpacing") or [1.0, 1.0]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    adapted.SharedFunctionalGroupsSequence = [group]
    return adapted


def reference_source_frame(derived: Dataset, frame_number: int | None) -> None:
    """Name the source frame in every source reference of ``derived`` (PS3.3 C.7.6.16.2.6).

    highdicom built it from one frame shown as a one-frame image
    (:func:`highdicom_source`): without Referenced Frame Number its references
    would mean every frame of the source.
    """
    if frame_number is None:
        return
    for item in derived.get("SourceImageSequence", []):
        item.ReferencedFrameNumber = frame_number
    for frame in derived.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            for item in derivation.SourceImageSequence:
                item.ReferencedFrameNumber = frame_number


def pin_dimension_organization_uid(derived: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID (PS3.3 C.7.6.17); fix it per job."""
    for item in derived.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in derived.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid
