"""Source headers prepared for highdicom: absent or unparsable Type 2 dates become empty."""

import pytest
from pydicom import Dataset

from cad_node.results.sources import fill_type_2


@pytest.mark.parametrize(
    ("keyword", "value", "kept"),
    [
        ("PatientBirthDate", "1912-06-23", False),
        ("PatientBirthDate", "19120623", True),
        ("StudyDate", "2026-13-45", False),
        ("StudyTime", "121314.5", True),
        ("StudyTime", "12:13:14 PM", False),
    ],
)
def test_a_date_or_time_that_does_not_parse_is_emptied(
    keyword: str, value: str, kept: bool
) -> None:
    dataset = Dataset()
    setattr(dataset, keyword, value)
    fill_type_2(dataset, slice_thickness_mm=1.25)
    assert (dataset[keyword].value == value) is kept
    assert dataset[keyword].value in (value, None)
    assert dataset.PatientID is None  # absent Type 2 attributes are added empty
