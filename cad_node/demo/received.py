"""What the demo's destination received: results per study, pictures and TID 1500 content.

The SR helpers read the content tree with pydicom (PS3.16 TID 1500): the
measurement groups in the "Imaging Measurements" container, their coded and
numeric items, the finding site with its laterality, and image regions.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage, SegmentationStorage

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
IMAGING_MEASUREMENTS = "126010"
"""DCM 126010 "Imaging Measurements", the container of the measurement groups."""
FINDING_SITE = "363698007"
"""SCT 363698007 "Finding site"."""
IMAGE_REGION = "111030"
"""DCM 111030 "Image Region", a finding's outline (SCOORD)."""
LATERALITY_CODES = {"24028007": "R", "7771000": "L"}
"""SCT "Right" and "Left" (PS3.16 CID 244) as ImageLaterality values."""
MARKS = "marks"
"""In the SeriesDescription of the burned-in overlay Secondary Captures."""
GRAD_CAM = "Grad-CAM"
"""In the SeriesDescription of the explanation map Secondary Captures."""
PNG_MIN_WIDTH = 512


@dataclass(frozen=True, slots=True)
class StudyResults:
    """The result objects the destination received for one study."""

    datasets: tuple[Dataset, ...]

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        return [ds for ds in self.datasets if ds.SOPClassUID == sop_class_uid]

    @property
    def sr(self) -> Dataset | None:
        """The TID 1500 report, or None when none arrived."""
        reports = self.of_class(COMPREHENSIVE_3D_SR)
        return reports[0] if reports else None

    @property
    def segs(self) -> list[Dataset]:
        return self.of_class(SegmentationStorage)

    def captures(self, word: str) -> list[Dataset]:
        """The Secondary Captures whose SeriesDescription holds ``word``, by InstanceNumber."""
        found = [
            ds
            for ds in self.of_class(SecondaryCaptureImageStorage)
            if word in str(ds.get("SeriesDescription", ""))
        ]
        return sorted(found, key=lambda ds: int(ds.InstanceNumber))


def read_received(folder: Path) -> dict[str, StudyResults]:
    """Every instance in ``folder``, grouped by StudyInstanceUID."""
    grouped: dict[str, list[Dataset]] = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = dcmread(path)
        grouped.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return {uid: StudyResults(tuple(found)) for uid, found in grouped.items()}


# --- pictures ------------------------------------------------------------------------------------


def enlarged(image: Image.Image) -> Image.Image:
    """``image`` scaled up by a whole factor to at least ``PNG_MIN_WIDTH`` (pixels stay square)."""
    factor = max(1, -(-PNG_MIN_WIDTH // image.width))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def capture_image(capture: Dataset) -> Image.Image:
    """The RGB picture of a Secondary Capture, as stored."""
    return Image.fromarray(capture.pixel_array.astype(np.uint8), mode="RGB")


def source_sop_instance_uid(capture: Dataset) -> str:
    """The image a Secondary Capture was derived from (Source Image Sequence, PS3.3 C.7.6.1)."""
    return str(capture.SourceImageSequence[0].ReferencedSOPInstanceUID)


# --- TID 1500 content ----------------------------------------------------------------------------


def concept(item: Dataset) -> str:
    """The CodeValue of a content item's Concept Name."""
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def measurement_groups(sr: Dataset) -> list[Dataset]:
    """The measurement groups (TID 1410/1411/1501) of a TID 1500 report."""
    containers = [item for item in sr.ContentSequence if concept(item) == IMAGING_MEASUREMENTS]
    return [group for container in containers for group in container.get("ContentSequence", [])]


def group_items(group: Dataset, code_value: str) -> list[Dataset]:
    """The items of ``group`` named ``code_value``."""
    return [item for item in group.get("ContentSequence", []) if concept(item) == code_value]


def coded_values(group: Dataset) -> dict[str, str]:
    """CODE items of a group: concept name CodeValue -> value CodeValue."""
    return {
        concept(item): str(item.ConceptCodeSequence[0].CodeValue)
        for item in group.get("ContentSequence", [])
        if item.ValueType == "CODE"
    }


def numeric_values(group: Dataset) -> dict[str, float]:
    """NUM items of a group: concept name CodeValue -> numeric value."""
    return {
        concept(item): float(item.MeasuredValueSequence[0].NumericValue)
        for item in group.get("ContentSequence", [])
        if item.ValueType == "NUM" and item.get("MeasuredValueSequence")
    }


def finding_laterality(group: Dataset) -> str | None:
    """ "R" or "L" from the group's finding site laterality, None when it has none."""
    for site in group_items(group, FINDING_SITE):
        for modifier in site.get("ContentSequence", []):
            code = str(modifier.ConceptCodeSequence[0].CodeValue)
            if code in LATERALITY_CODES:
                return LATERALITY_CODES[code]
    return None


@dataclass(frozen=True, slots=True)
class ImageRegion:
    """A finding's outline on one image: the image and the outline's centre (row, column)."""

    sop_instance_uid: str
    centre_rc: tuple[float, float]


def image_regions(group: Dataset) -> list[ImageRegion]:
    """The SCOORD outlines of a group (PS3.3 C.18.6), with the image each lies on."""
    regions = []
    for item in group_items(group, IMAGE_REGION):
        points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)  # (column, row)
        image = item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        centre = (float(points[:, 1].mean()), float(points[:, 0].mean()))
        regions.append(ImageRegion(str(image), centre))
    return regions


def groups_with(sr: Dataset, code_value: str) -> list[Dataset]:
    """The measurement groups holding a CODE item named ``code_value``."""
    return [g for g in measurement_groups(sr) if code_value in coded_values(g)]


def region_groups(sr: Dataset) -> list[Dataset]:
    """The measurement groups that outline a finding on an image."""
    return [g for g in measurement_groups(sr) if group_items(g, IMAGE_REGION)]


def save_png(image: Image.Image, out_dir: Path, name: str) -> str:
    """Save ``image`` enlarged as ``out_dir / name``; returns ``name``."""
    enlarged(image).save(out_dir / name)
    return name
