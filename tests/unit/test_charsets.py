"""Specific Character Sets (PS3.3 C.12.1.1.2, PS3.5 6.1): text the result objects copy from
the source images comes back as the same strings, under a Specific Character Set that
encodes it.

Names are those of pydicom's character set test files (``pydicom.data.get_charset_files``);
the study descriptions are ours, in each repertoire.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_charset_files

from cad_node.imaging.image_set_loading import load_image_set
from cad_node.results.build import build_planar_objects, build_volume_objects
from cad_node.results.uids import result_uids
from tests.dicom_validation import assert_valid_dicom
from tests.unit import test_planar_results as planar
from tests.unit.test_results_objects import OPTIONS, Case, every_object, make_case


@dataclass(frozen=True, slots=True)
class Charset:
    specific_character_set: str | list[str]
    example_file: str
    """A pydicom test file whose PatientName is written in this character set."""
    study_description: str

    @property
    def written(self) -> str | list[str]:
        """The Specific Character Set of the results: an empty value 1 named ISO 2022 IR 6."""
        value = self.specific_character_set
        if isinstance(value, list) and not value[0]:
            return ["ISO 2022 IR 6", *value[1:]]
        return value


CHARSETS = {
    "ISO_IR 100": Charset("ISO_IR 100", "chrFren.dcm", "Thorax à faible dose, poumons"),
    "ISO_IR 192": Charset("ISO_IR 192", "chrX1.dcm", "胸部 CT 低剂量"),
    "ISO 2022 IR 87": Charset(["", "ISO 2022 IR 87"], "chrH31.dcm", "胸部 CT"),
    "ISO 2022 IR 13": Charset(["ISO 2022 IR 13", "ISO 2022 IR 87"], "chrH32.dcm", "ｷｮｳﾌﾞ 胸部"),
    "GB18030": Charset("GB18030", "chrX2.dcm", "胸部 CT 低剂量"),
    "ISO 2022 IR 149": Charset(["", "ISO 2022 IR 149"], "chrI2.dcm", "흉부 CT"),
}

COPIED_TEXT = ("PatientName", "ReferringPhysicianName", "StudyDescription")
"""Patient and General Study attributes (PS3.3 C.7.1.1, C.7.2.1) the results copy as text."""
OPTIONAL_TEXT = frozenset({"StudyDescription"})
"""Type 3: the SEG, SR and presentation states copy it, a Secondary Capture or KOS need not."""


def example_name(charset: Charset) -> str:
    (path,) = [p for p in get_charset_files(charset.example_file) if p.endswith("dcm")]
    name = pydicom.dcmread(path, force=True).PatientName
    return str(name)


def as_received(ds: Dataset) -> Dataset:
    """``ds`` written and read back, as the worker reads it from the spool."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def written_in(charset: Charset, datasets: list[Dataset]) -> list[Dataset]:
    """``datasets`` with their text in ``charset``, as received."""
    name = example_name(charset)
    sources = []
    for ds in datasets:
        ds.SpecificCharacterSet = charset.specific_character_set
        ds.PatientName = ds.ReferringPhysicianName = name
        ds.StudyDescription = charset.study_description
        sources.append(as_received(ds))
    assert str(sources[0].PatientName) == name, "the fixture encodes the name"
    return sources


def assert_same_text(result: Dataset, source: Dataset, charset: Charset, path: Path) -> None:
    """``result`` written to ``path`` is valid and reads back with the source's text."""
    result.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    read = pydicom.dcmread(path)
    for keyword in COPIED_TEXT:
        if keyword in OPTIONAL_TEXT and keyword not in read:
            continue
        assert str(read[keyword].value) == str(source[keyword].value), (path.name, keyword)
    assert read.SpecificCharacterSet == charset.written, path.name


@pytest.mark.parametrize("charset_name", list(CHARSETS))
def test_ct_objects_keep_the_text_of_each_character_set(charset_name: str, tmp_path: Path) -> None:
    charset = CHARSETS[charset_name]
    case: Case = make_case()
    sources = written_in(charset, case.series)
    objects = build_volume_objects(
        sources, case.volume, case.result, case.uids, OPTIONS, overlay=True, gsps=True
    )
    for copied in (*objects.segs, objects.sr, *objects.states):
        assert "StudyDescription" in copied, copied.Modality
    assert len(every_object(objects)) == 1 + 1 + 1 + len(objects.overlays) + len(objects.states)
    assert objects.overlays
    assert objects.states
    for number, dataset in enumerate(every_object(objects)):
        assert_same_text(dataset, sources[0], charset, tmp_path / f"object{number}.dcm")


@pytest.mark.parametrize("charset_name", list(CHARSETS))
def test_mammography_objects_keep_the_text_of_each_character_set(
    charset_name: str, tmp_path: Path
) -> None:
    charset = CHARSETS[charset_name]
    sources = written_in(charset, planar._mammo_datasets())
    image_set = load_image_set(sources)
    result = planar._mammo_result(image_set)
    objects = build_planar_objects(
        sources,
        image_set,
        result,
        result_uids("mammo-job"),
        planar.OPTIONS,
        overlay=True,
        gsps=True,
    )
    assert objects.segs
    assert objects.parametric_maps
    assert objects.kos is not None
    for number, dataset in enumerate(every_object(objects)):
        assert_same_text(dataset, sources[0], charset, tmp_path / f"object{number}.dcm")
