"""What the log and job-error redaction withholds (values) and keeps (what names the failure)."""

import pydicom
import pytest

from cad_node.security.redaction import WITHHELD, redact


@pytest.mark.parametrize(
    "message",
    [
        "Invalid value for VR DA: '1912-06-23'",
        "Unable to convert 'DOE^JANE' to 'PN' object",
        'patient "PAT-0042" refused',
        "'Smith' object has no attribute 'x y'",  # not an identifier before " object"
    ],
)
def test_quoted_values_are_withheld(message: str) -> None:
    redacted = redact(message)

    assert WITHHELD in redacted
    for value in ("1912-06-23", "DOE^JANE", "PAT-0042", "x y"):
        assert value not in redacted


def test_the_attribute_and_type_of_an_attribute_error_stay() -> None:
    dataset = pydicom.Dataset()
    with pytest.raises(AttributeError) as caught:
        _ = dataset.PatientOrientation

    assert redact(str(caught.value)) == str(caught.value)
    assert "'Dataset' object has no attribute 'PatientOrientation'" in redact(str(caught.value))


def test_uids_keywords_and_traceback_files_stay() -> None:
    message = (
        "series '1.2.826.0.1.3680043.8.498.1' lacks 'ImageOrientationPatient'\n"
        '  File "/srv/cad_node/imaging/volume.py", line 3'
    )

    assert redact(message) == message


def test_a_value_that_looks_like_a_type_is_withheld_unless_an_object_follows() -> None:
    assert redact("name is 'Smith'") == f"name is '{WITHHELD}'"
