"""No patient data in any log line: a whole spine run at DEBUG, then a grep of the node's log.

The series carries distinctive PatientName, PatientID and PatientBirthDate
values; it is received, assembled, inferred and delivered, next to a corrupt
file, a sender whose AE title is not allowed, and a series the model cannot
read (its pixel data cut short) and one whose birth date is malformed (which
pydicom quotes in warnings and exceptions). None of the values may reach the log.
"""

import io
import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from cad_node.security.redaction import WITHHELD, RedactingFilter, redact
from tests.conftest import dataset_bytes, send
from tests.dcmtk import storescu
from tests.integration.peers import running_node, storescp, wait_for, write_config
from tests.synthetic import write_ct_series

PATIENT_NAME = "Zqxjkvw^Brumhilde"
PATIENT_ID = "PID-QX7734-ZZ"
PATIENT_BIRTH_DATE = "19120623"
MALFORMED_BIRTH_DATE = "1912-06-23"
"""Not a DA value (PS3.5 6.2), as old systems write it: pydicom quotes it in a warning."""
ACCESSION_NUMBER = "ACCN-QX5521"
PHI = (
    "Zqxjkvw",
    "Brumhilde",
    PATIENT_ID,
    "QX7734",
    PATIENT_BIRTH_DATE,
    "1912-06-23",
    "1912/06/23",
    ACCESSION_NUMBER,
)
"""Every form of the values a log line might take (name parts, a formatted date)."""


def _with_patient(path: Path, out: Path, birth_date: str) -> Path:
    ds = dcmread(path)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = birth_date
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.PatientIdentityRemoved = "NO"
    ds.save_as(out)
    return out


def _phi_series(folder: Path, out: Path, seed: int, birth_date: str) -> list[Path]:
    out.mkdir()
    series = write_ct_series(folder, seed=seed)
    return [_with_patient(path, out / path.name, birth_date) for path in series.paths]


def _corrupt(path: Path, out: Path) -> Path:
    """Patient elements intact, then an element whose length runs past the end."""
    raw = path.read_bytes()
    meta_end = len(raw) - len(dataset_bytes(path))
    dataset = dataset_bytes(path)
    name_at = dataset.index(PATIENT_NAME.encode())
    broken = dataset[: name_at + 64] + b"\x20\x00\x0d\x00UI\xff\x7f1.2" + b"garbage" * 10
    out.write_bytes(raw[:meta_end] + broken)
    return out


def _short_pixels(paths: list[Path], out: Path) -> list[Path]:
    """Three slices of a new series whose pixel data is cut to half its length."""
    out.mkdir()
    series_instance_uid = generate_uid()
    written = []
    for path in paths[:3]:
        ds = dcmread(path)
        ds.SeriesInstanceUID = series_instance_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(out / path.name)
        written.append(out / path.name)
    return written


@pytest.mark.slow
def test_no_patient_data_in_the_node_log(tmp_path: Path) -> None:
    images = _phi_series(tmp_path / "ct", tmp_path / "phi", 77, PATIENT_BIRTH_DATE)
    malformed = _phi_series(tmp_path / "ct2", tmp_path / "phi2", 78, MALFORMED_BIRTH_DATE)
    corrupt = _corrupt(images[0], tmp_path / "corrupt.dcm")
    short = _short_pixels(images, tmp_path / "short")
    config_path = write_config(
        tmp_path, log_level="DEBUG", allowed_calling_aets=["SCANNER"], quiet_seconds=2
    )
    log_path = tmp_path / "node.log"
    pacs_dir = tmp_path / "pacs"
    with (
        running_node(config_path, log_path) as node,
        storescp(node.config["destinations"]["pacs"]["port"], pacs_dir),
    ):
        assert storescu(node.port, images[:1], calling_ae="INTRUDER").returncode != 0
        assert send(node.port, [corrupt]) == [0xC210]
        assert storescu(node.port, short).returncode == 0
        assert storescu(node.port, malformed).returncode == 0
        sent = storescu(node.port, images)
        assert sent.returncode == 0, sent.stderr
        wait_for(
            lambda: sum(1 for p in pacs_dir.glob("*") if p.is_file()) >= 2,
            180,
            "SEG and SR at the destination",
        )
        wait_for(lambda: all(f"job {n} " in node.log() for n in (1, 2, 3)), 120, "every job")
    log = log_path.read_text(errors="replace")
    assert " DEBUG " in log, "the node did not log at DEBUG"
    assert "INTRUDER" in log
    leaks = [line for line in log.splitlines() if any(value in line for value in PHI)]
    assert leaks == []
    assert "withheld" in log, "the malformed birth date was never quoted: the test lost its bite"


def test_redact_withholds_quoted_values_but_keeps_uids_and_frames() -> None:
    assert redact("Invalid value for VR DA: '1912-06-23'.") == (
        f"Invalid value for VR DA: '{WITHHELD}'."
    )
    assert (
        redact('copy from dataset "1.2.840.113619.2.55"')
        == 'copy from dataset "1.2.840.113619.2.55"'
    )
    frame = '  File "/x/valuerep.py", line 679, in __new__'
    assert redact(frame) == frame
    assert redact("name \"Zqxjkvw^Brumhilde\" id 'PID-1'") == f"name '{WITHHELD}' id '{WITHHELD}'"


def test_the_filter_covers_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.redaction")
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("value %r", PATIENT_NAME)
        try:
            raise ValueError(f"Unable to convert '{MALFORMED_BIRTH_DATE}' to 'DA' object")
        except ValueError:
            logger.exception("job failed")
    finally:
        logger.removeHandler(handler)
    written = handler.stream.getvalue()
    assert "ValueError" in written
    assert not any(value in written for value in PHI)
