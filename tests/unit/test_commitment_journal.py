"""Storage Commitment's journal transitions and report parsing, without a network.

sent -> committed (reported committed); sent -> pending (reported failed, sent again) or
failed (attempts used up); asked -> asked again (no answer) -> failed (requests used up);
a report of another transaction changes nothing.
"""

from datetime import UTC, datetime, timedelta

import pytest
from pydicom import Dataset

from cad_node.config import DestinationSettings
from cad_node.domain.commitment import CommitmentReport, FailedSopReference, SopReference
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.export.commitment import (
    EVENT_ALL_COMMITTED,
    EVENT_SOME_FAILED,
    action_information,
    parse_report,
)
from cad_node.export.commitment_service import awaiting_commitment
from cad_node.export.policy import DeliveryUpdate
from cad_node.store.commitments import (
    claim_awaiting,
    commitment_destinations,
    give_up,
    mark_requested,
    note_request_failure,
    record_report,
)
from cad_node.store.schema import Delivery, Job, Result, Series, Study
from tests.conftest import Journal

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
TRANSACTION = "1.2.826.0.1.3680043.8.498.77"
UIDS = ("1.2.826.0.1.3680043.8.498.70.1", "1.2.826.0.1.3680043.8.498.70.2")


def sent_deliveries(journal: Journal, attempts: int = 1) -> dict[str, int]:
    """Two results stored at "pacs" (sent, commitment due at T0); delivery ids by UID."""
    ids = {}
    with journal.sessionmaker.begin() as session:
        session.add(Study(study_instance_uid="1.2.3", created_at=T0))
        session.flush()
        session.add(
            Series(
                series_instance_uid="1.2.3.4",
                study_instance_uid="1.2.3",
                modality="CT",
                state=SeriesState.ROUTED,
                calling_ae_title="SCANNER",
                attributes={},
                first_received_at=T0,
                last_received_at=T0,
            )
        )
        session.flush()
        job = Job(
            series_instance_uid="1.2.3.4",
            series_revision=1,
            rule_name="chest",
            model_name="lung_nodule_ct",
            destinations=["pacs"],
            state=JobState.DONE,
            created_at=T0,
        )
        session.add(job)
        session.flush()
        for uid in UIDS:
            result = Result(
                job_id=job.id,
                kind=ResultKind.SR,
                sop_class_uid=SR,
                sop_instance_uid=uid,
                series_instance_uid="1.2.3.4.5",
                path=f"results/{uid}.dcm",
                created_at=T0,
            )
            session.add(result)
            session.flush()
            delivery = Delivery(
                result_id=result.id,
                destination="pacs",
                state=DeliveryState.SENT,
                attempts=attempts,
                next_attempt_at=T0,
                delivered_at=T0,
            )
            session.add(delivery)
            session.flush()
            ids[uid] = delivery.id
    return ids


def ask(journal: Journal, now: datetime, transaction: str = TRANSACTION) -> list[int]:
    with journal.sessionmaker.begin() as session:
        batch = claim_awaiting(session, "pacs", now, 100)
        ids = [item.delivery_id for item in batch]
        mark_requested(session, ids, transaction, now, now + timedelta(seconds=60))
    return ids


def row(journal: Journal, delivery_id: int) -> Delivery:
    with journal.sessionmaker() as session:
        return session.get_one(Delivery, delivery_id)


def report(committed: tuple[str, ...] = (), failed: tuple[str, ...] = ()) -> CommitmentReport:
    return CommitmentReport(
        TRANSACTION,
        tuple(SopReference(SR, uid) for uid in committed),
        tuple(FailedSopReference(SR, uid, 0x0112) for uid in failed),
    )


def apply(journal: Journal, answer: CommitmentReport, max_attempts: int = 3) -> None:
    with journal.sessionmaker.begin() as session:
        record_report(session, answer, T0 + timedelta(seconds=1), max_attempts)


def test_stored_is_sent_where_the_destination_commits() -> None:
    stored = DeliveryUpdate(DeliveryState.DELIVERED, 1, T0, 0, None, T0)
    retry = DeliveryUpdate(DeliveryState.PENDING, 1, T0, None, "down", None)
    plain = DestinationSettings(host="127.0.0.1", port=104, ae_title="PACS")
    committing = plain.model_copy(update={"commitment": True, "commitment_delay_seconds": 5})
    assert awaiting_commitment([stored, retry], plain, T0) == [stored, retry]
    sent, unchanged = awaiting_commitment([stored, retry], committing, T0)
    assert (sent.state, sent.next_attempt_at, sent.delivered_at) == (
        DeliveryState.SENT,
        T0 + timedelta(seconds=5),
        T0,
    )
    assert unchanged == retry


def test_asking_stamps_the_transaction_and_the_answer_time(journal: Journal) -> None:
    ids = sent_deliveries(journal)
    assert ask(journal, T0) == list(ids.values())
    delivery = row(journal, ids[UIDS[0]])
    assert delivery.commitment_transaction_uid == TRANSACTION
    assert (delivery.commitment_requested_at, delivery.commitment_attempts) == (T0, 1)
    assert delivery.next_attempt_at == T0 + timedelta(seconds=60)
    with journal.sessionmaker() as session:
        assert commitment_destinations(session, T0 + timedelta(seconds=59)) == []
        assert commitment_destinations(session, T0 + timedelta(seconds=60)) == ["pacs"]


def test_reported_committed_is_committed(journal: Journal) -> None:
    ids = sent_deliveries(journal)
    ask(journal, T0)
    apply(journal, report(committed=UIDS))
    for delivery_id in ids.values():
        delivery = row(journal, delivery_id)
        assert delivery.state == DeliveryState.COMMITTED
        assert delivery.committed_at == T0 + timedelta(seconds=1)


def test_reported_failed_is_sent_again_unless_the_attempts_are_used_up(journal: Journal) -> None:
    ids = sent_deliveries(journal, attempts=2)
    ask(journal, T0)
    apply(journal, report(committed=UIDS[:1], failed=UIDS[1:]), max_attempts=3)
    again = row(journal, ids[UIDS[1]])
    assert again.state == DeliveryState.PENDING
    assert again.next_attempt_at == T0 + timedelta(seconds=1)
    assert (again.commitment_transaction_uid, again.commitment_attempts) == (None, 0)
    assert again.last_error == "not committed by the destination: no such object instance (0x0112)"
    assert row(journal, ids[UIDS[0]]).state == DeliveryState.COMMITTED


def test_reported_failed_with_the_attempts_used_up_is_failed(journal: Journal) -> None:
    ids = sent_deliveries(journal, attempts=3)
    ask(journal, T0)
    apply(journal, report(failed=UIDS), max_attempts=3)
    delivery = row(journal, ids[UIDS[0]])
    assert delivery.state == DeliveryState.FAILED
    assert delivery.last_error is not None
    assert delivery.last_error.endswith("gave up after 3 attempts")


def test_a_report_of_another_transaction_changes_nothing(journal: Journal) -> None:
    ids = sent_deliveries(journal)
    ask(journal, T0, transaction="1.2.826.0.1.3680043.8.498.78")
    with journal.sessionmaker.begin() as session:
        tally = record_report(session, report(committed=UIDS), T0, 3)
    assert not tally.known
    assert {row(journal, i).state for i in ids.values()} == {DeliveryState.SENT}


def test_a_failed_request_waits_and_the_last_one_gives_up(journal: Journal) -> None:
    ids = sent_deliveries(journal)
    ask(journal, T0)
    with journal.sessionmaker.begin() as session:
        waiting = note_request_failure(session, TRANSACTION, "refused", T0 + timedelta(seconds=5))
    assert waiting == 2
    delivery = row(journal, ids[UIDS[0]])
    assert delivery.state == DeliveryState.SENT
    assert delivery.next_attempt_at == T0 + timedelta(seconds=5)
    assert delivery.last_error == "storage commitment request failed: refused"
    with journal.sessionmaker.begin() as session:
        give_up(session, list(ids.values()), "no storage commitment answer", T0)
    assert {row(journal, i).state for i in ids.values()} == {DeliveryState.FAILED}


def test_the_request_names_every_object_under_its_transaction() -> None:
    references = [SopReference(SR, UIDS[0]), SopReference(CT, UIDS[1])]
    information = action_information(TRANSACTION, references)
    assert information.TransactionUID == TRANSACTION
    assert [
        (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
        for item in information.ReferencedSOPSequence
    ] == [(SR, UIDS[0]), (CT, UIDS[1])]


def test_a_report_is_read_with_its_failure_reasons() -> None:
    information = action_information(TRANSACTION, [SopReference(SR, UIDS[0])])
    failed = Dataset()
    failed.ReferencedSOPClassUID = CT
    failed.ReferencedSOPInstanceUID = UIDS[1]
    failed.FailureReason = 0x0112
    information.FailedSOPSequence = [failed]
    parsed = parse_report(EVENT_SOME_FAILED, information)
    assert parsed.committed == (SopReference(SR, UIDS[0]),)
    assert parsed.failed == (FailedSopReference(CT, UIDS[1], 0x0112),)
    assert parsed.failed[0].reason == "no such object instance (0x0112)"
    assert parse_report(EVENT_ALL_COMMITTED, information).transaction_uid == TRANSACTION


@pytest.mark.parametrize("event_type", [0, 3])
def test_another_event_type_or_no_transaction_is_refused(event_type: int) -> None:
    with pytest.raises(ValueError, match="Event Type ID"):
        parse_report(event_type, Dataset())
    with pytest.raises(ValueError, match="Transaction UID"):
        parse_report(EVENT_ALL_COMMITTED, Dataset())
