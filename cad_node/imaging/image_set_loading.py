"""Builds an :class:`~cad_node.domain.image_sets.ImageSet` from the planar images of one study.

Mammograms (MG, DX) and photographs (OP, XC) are read one :class:`PlanarImage`
per image instance, in the order given, in their stored orientation:

- grayscale pixels pass through the Modality LUT (RescaleSlope/RescaleIntercept or a
  Modality LUT Sequence, PS3.3 C.11.1) and MONOCHROME1 is inverted so that higher
  values are brighter, as in MONOCHROME2 (PS3.3 C.7.6.3.1.2);
- colour pixels come out as RGB; YBR_FULL and YBR_FULL_422 (JPEG baseline) are
  converted with pydicom's ``convert_color_space`` (PS3.3 C.7.6.3.1.2);
- each frame of a multi-frame photograph (colour, or Ophthalmic Photography: a camera
  that stores both fields or a stereo pair of one eye in one instance) is one
  :class:`PlanarImage` with its frame number, up to :data:`MAX_PHOTOGRAPH_FRAMES`;
  a multi-frame grayscale image of another SOP class (Breast Tomosynthesis, PS3.3 A.83)
  is a volume, not a 2D view, and is refused naming its SOP class.

Instances without pixels of their own (SR, PR, KO) and segmentations (SEG) are skipped.
When both a For Processing and a For Presentation mammogram of the same
laterality and view are present, only the For Presentation one is kept: it is
the image a radiologist reads and results must reference.
"""

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, convert_color_space
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForProcessing,
    OphthalmicPhotography8BitImageStorage,
    OphthalmicPhotography16BitImageStorage,
)

from cad_node.domain.image_sets import ImageSet, Laterality, PlanarImage
from cad_node.errors import InvalidSeriesError
from cad_node.imaging.volume import read_or_refuse

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "PR", "KO", "RTSTRUCT", "REG", "DOC"})
"""Modalities whose instances are not images a model reads (SEG carries pixels: a mask)."""

FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
    }
)

PHOTOGRAPH_SOP_CLASSES = frozenset(
    {OphthalmicPhotography8BitImageStorage, OphthalmicPhotography16BitImageStorage}
)
"""Classes whose frames are photographs (PS3.3 A.39) even when grayscale (red-free)."""

MAX_PHOTOGRAPH_FRAMES = 16
"""The most frames of one photograph instance read; more is a video or an angiogram."""

_YBR_FULL = frozenset({"YBR_FULL", "YBR_FULL_422"})
_LATERALITIES = {"R": Laterality.RIGHT, "L": Laterality.LEFT}


def _read(item: Dataset | Path | str) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError) as exc:
        raise InvalidSeriesError(f"cannot read {Path(item).name}: {exc}") from exc


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "?"))


def is_image(ds: Dataset) -> bool:
    """Whether ``ds`` is an image instance a planar model can read."""
    modality = str(ds.get("Modality", "")).upper()
    return "PixelData" in ds and modality not in NON_IMAGE_MODALITIES


def is_for_processing(ds: Dataset) -> bool:
    """Whether ``ds`` is a For Processing X-ray image (PS3.3 C.8.11.1.1.1)."""
    if str(ds.get("SOPClassUID", "")) in FOR_PROCESSING_SOP_CLASSES:
        return True
    return str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"


def laterality_of(ds: Dataset) -> Laterality | None:
    """ImageLaterality (0020,0062), else Laterality (0020,0060); None when neither says R or L."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value:
            return _LATERALITIES.get(value)
    return None


def pixel_spacing_of(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (0028,0030), else ImagerPixelSpacing (0018,1164), in mm; None if unusable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or len(value) != 2:
            continue
        row_spacing, column_spacing = float(value[0]), float(value[1])
        if row_spacing > 0 and column_spacing > 0:
            return row_spacing, column_spacing
    return None


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames (0028,0008), 1 when absent or empty."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def _stored_frame(ds: Dataset, index: int) -> npt.NDArray[np.generic]:
    # raw=True: colour stays in its stored space, converted below where the standard says how
    try:
        return pixel_array(ds, index=index, raw=True)
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InvalidSeriesError(f"cannot decode the pixels of {_uid(ds)}: {exc}") from exc


def _modality_values(frame: npt.NDArray[np.generic], ds: Dataset) -> npt.NDArray[np.float32]:
    return np.array(apply_modality_lut(frame, ds), dtype=np.float32, copy=True)


def _stored_range(ds: Dataset) -> npt.NDArray[np.int64]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1], dtype=np.int64)
    return np.array([0, (1 << bits) - 1], dtype=np.int64)


def _grayscale(ds: Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidSeriesError(
            f"image {_uid(ds)} has PhotometricInterpretation {photometric or 'none'}: "
            "only MONOCHROME1 and MONOCHROME2 one-sample images are read"
        )
    values = _modality_values(frame, ds)
    if photometric == "MONOCHROME1":
        # mirror within the range the Modality LUT can output, so the range is kept
        low, high = _modality_values(_stored_range(ds), ds)
        values = (low + high) - values
    return values


def _colour(ds: Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    photometric = str(ds.PhotometricInterpretation)
    if photometric in _YBR_FULL:
        frame = convert_color_space(frame, photometric, "RGB")
    elif photometric != "RGB":
        raise InvalidSeriesError(
            f"image {_uid(ds)} has PhotometricInterpretation {photometric}: "
            "only RGB, YBR_FULL and YBR_FULL_422 colour images are read"
        )
    return np.array(frame, dtype=np.float32, copy=True)


def _pixels(ds: Dataset, index: int) -> npt.NDArray[np.float32]:
    frame = _stored_frame(ds, index)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return _colour(ds, frame)
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        return _grayscale(ds, frame)
    raise InvalidSeriesError(f"image {_uid(ds)} has {ds.SamplesPerPixel} samples per pixel")


def is_photograph(ds: Dataset) -> bool:
    """Whether each frame of ``ds`` is a photograph: a colour or Ophthalmic Photography image."""
    colour = int(ds.get("SamplesPerPixel", 1)) == 3
    return colour or str(ds.get("SOPClassUID", "")) in PHOTOGRAPH_SOP_CLASSES


def frame_numbers_read(ds: Dataset) -> list[int | None]:
    """The frames of ``ds`` read as images: [None] for a single frame, else 1 ... n.

    Raises
    ------
    InvalidSeriesError
        A multi-frame image that is no photograph (a Breast Tomosynthesis image is a
        volume), or a photograph of more than :data:`MAX_PHOTOGRAPH_FRAMES` frames.
    """
    frames = number_of_frames(ds)
    if frames == 1:
        return [None]
    sop_class_uid = UID(str(ds.get("SOPClassUID", "")))
    if not is_photograph(ds):
        raise InvalidSeriesError(
            f"image {_uid(ds)} is a {sop_class_uid.name} ({sop_class_uid}) of {frames} "
            "grayscale frames: not a 2D view, which is all a planar model reads"
        )
    if frames > MAX_PHOTOGRAPH_FRAMES:
        raise InvalidSeriesError(
            f"image {_uid(ds)} is a {sop_class_uid.name} of {frames} frames: at most "
            f"{MAX_PHOTOGRAPH_FRAMES} photographs per instance are read"
        )
    return list(range(1, frames + 1))


def _planar_images(ds: Dataset) -> list[PlanarImage]:
    """One image per frame read (:func:`frame_numbers_read`)."""
    return [_planar_image(ds, frame_number) for frame_number in frame_numbers_read(ds)]


def _planar_image(ds: Dataset, frame_number: int | None) -> PlanarImage:
    pixels = _pixels(ds, 0 if frame_number is None else frame_number - 1)
    frame_of_reference = ds.get("FrameOfReferenceUID")
    return PlanarImage(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        pixels=pixels,
        pixel_spacing_mm=pixel_spacing_of(ds),
        laterality=laterality_of(ds),
        view_position=str(ds.get("ViewPosition", "") or "").strip().upper(),
        photometric_interpretation="RGB" if pixels.ndim == 3 else "MONOCHROME2",
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        frame_number=frame_number,
    )


def _deduplicate(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The first instance of each SOPInstanceUID (a sender may resend one)."""
    first: dict[str, Dataset] = {}
    for ds in datasets:
        first.setdefault(_uid(ds), ds)
    if len(first) < len(datasets):
        logger.info("%d duplicate instance(s) ignored", len(datasets) - len(first))
    return list(first.values())


def _view_key(ds: Dataset) -> tuple[Laterality | None, str]:
    return laterality_of(ds), str(ds.get("ViewPosition", "") or "").strip().upper()


def prefer_for_presentation(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Drop each For Processing image whose laterality and view also has a For Presentation one."""
    presented = {_view_key(ds) for ds in datasets if not is_for_processing(ds)}
    kept = [ds for ds in datasets if not (is_for_processing(ds) and _view_key(ds) in presented)]
    if len(kept) < len(datasets):
        logger.debug("%d For Processing image(s) superseded", len(datasets) - len(kept))
    return kept


def is_volume(ds: Dataset) -> bool:
    """A multi-frame image whose frames are no photographs (Breast Tomosynthesis)."""
    return number_of_frames(ds) > 1 and not is_photograph(ds)


def without_volumes(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Leave out volumes (a tomosynthesis series in a study with its 2D views), unless
    nothing else is left: then :func:`frame_numbers_read` refuses them, naming the class."""
    kept = [ds for ds in datasets if not is_volume(ds)]
    if not kept:
        return list(datasets)
    if len(kept) < len(datasets):
        logger.info("%d multi-frame volume(s) left out of the 2D images", len(datasets) - len(kept))
    return kept


def _single_value(datasets: Sequence[Dataset], keyword: str) -> str:
    values = sorted({str(ds.get(keyword, "") or "") for ds in datasets})
    if len(values) != 1:
        raise InvalidSeriesError(
            f"the images disagree on {keyword}: {len(values)} different values"
        )
    if not values[0]:
        raise InvalidSeriesError(f"the images have no {keyword}")
    return values[0]


def load_image_set(items: Iterable[Dataset | Path | str]) -> ImageSet:
    """Read the planar images of one study into an :class:`ImageSet`, in the order given.

    Raises
    ------
    InvalidSeriesError
        An unreadable file or undecodable pixels, no image instance left, images of
        several studies or modalities, an unsupported PhotometricInterpretation, a
        multi-frame image that is no photograph (:func:`frame_numbers_read`), a
        malformed file (see :data:`cad_node.imaging.volume.MALFORMED_DATASET_ERRORS`).
    """
    return read_or_refuse(lambda: _load_image_set(items))


def _load_image_set(items: Iterable[Dataset | Path | str]) -> ImageSet:
    datasets = [_read(item) for item in items]
    images = _deduplicate([ds for ds in datasets if is_image(ds)])
    if not images:
        raise InvalidSeriesError(
            f"no image instance among {len(datasets)} instance(s) (SR, SEG, PR, KO are skipped)"
        )
    study_instance_uid = _single_value(images, "StudyInstanceUID")
    modality = _single_value(images, "Modality")
    images = without_volumes(prefer_for_presentation(images))
    return ImageSet(
        study_instance_uid=study_instance_uid,
        modality=modality,
        images=tuple(image for ds in images for image in _planar_images(ds)),
    )
