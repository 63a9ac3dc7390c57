"""AccessionNumber, StudyDate and StudyDescription kept in the study row at ingest.

Read from the header (cut to their VR's length, a date only as YYYYMMDD), recorded on
both journal paths (SQLAlchemy Core and the driver) on SQLite and PostgreSQL; the
first non-empty value received for a study wins.
"""

from pathlib import PurePosixPath

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage
from sqlalchemy import select

from cad_node.ingest.header import instance_record, study_descriptors
from cad_node.store.instances import StudyDescriptors
from cad_node.store.schema import Study
from tests.conftest import Journal
from tests.unit.test_instances import (  # noqa: F401 - recording_path: every test on both paths
    STUDY,
    T0,
    make_record,
    record,
    recording_path,
)


def study_row(journal: Journal) -> tuple[str | None, str | None, str | None]:
    with journal.sessionmaker() as session:
        study = session.execute(select(Study)).scalar_one()
        return study.accession_number, study.study_date, study.study_description


def test_the_first_instance_sets_the_study_descriptors(any_journal: Journal) -> None:
    descriptors = StudyDescriptors("ACC-1", "20260102", "CT chest")
    record(any_journal, make_record(1, study=descriptors))

    assert study_row(any_journal) == ("ACC-1", "20260102", "CT chest")


def test_the_first_non_empty_value_wins(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    record(any_journal, make_record(2, study=StudyDescriptors(study_date="20260102")))
    record(any_journal, make_record(3, study=StudyDescriptors("ACC-1", "20991231", "CT chest")))
    record(any_journal, make_record(4, study=StudyDescriptors("ACC-2", None, "other")))

    assert study_row(any_journal) == ("ACC-1", "20260102", "CT chest")


def test_a_batch_keeps_its_first_values(any_journal: Journal) -> None:
    from cad_node.store import instances

    records = [
        make_record(1),
        make_record(2, study=StudyDescriptors(accession_number="ACC-1")),
        make_record(3, study=StudyDescriptors("ACC-2", "20260102")),
    ]
    with any_journal.sessionmaker.begin() as session:
        instances.record_instances(session, records, T0)

    assert study_row(any_journal) == ("ACC-1", "20260102", None)


def test_a_study_without_descriptors_keeps_nulls(any_journal: Journal) -> None:
    record(any_journal, make_record(1))

    assert study_row(any_journal) == (None, None, None)


def test_a_value_longer_than_its_column_is_refused() -> None:
    with pytest.raises(ValueError, match="accession_number"):
        StudyDescriptors(accession_number="A" * 17)


def header(**values: object) -> Dataset:
    dataset = Dataset()
    dataset.SOPInstanceUID = "1.2.3.4.1"
    dataset.SOPClassUID = CTImageStorage
    dataset.SeriesInstanceUID = "1.2.3.4.2"
    dataset.StudyInstanceUID = STUDY
    dataset.Modality = "CT"
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


def test_the_header_gives_the_descriptors_cut_to_their_vr() -> None:
    found = study_descriptors(
        header(AccessionNumber=" ACC-1 ", StudyDate="2026.01.02", StudyDescription="D" * 70)
    )

    assert found == StudyDescriptors("ACC-1", "20260102", "D" * 64)


@pytest.mark.parametrize(
    "values",
    [{}, {"AccessionNumber": "", "StudyDate": "", "StudyDescription": "  "}, {"StudyDate": "2026"}],
)
def test_no_descriptors_when_all_are_empty_or_malformed(values: dict[str, object]) -> None:
    assert study_descriptors(header(**values)) is None


def test_the_instance_record_carries_them() -> None:
    made = instance_record(
        header(AccessionNumber="ACC-1", StudyDescription="CT chest"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="SCANNER",
        path=PurePosixPath("spool/a.dcm"),
        size_bytes=10,
    )

    assert made.study == StudyDescriptors("ACC-1", None, "CT chest")
