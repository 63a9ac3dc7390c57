"""The load test's traffic: template copies with their own UIDs, and storescu's log read back."""

import pytest
from pydicom import dcmread

from cad_node.ingest.spool import is_safe_uid
from tests.integration.load_traffic import (
    BULK_SERIES_DESCRIPTION,
    LoadPlan,
    SenderTraffic,
    read_outcome,
    write_traffic,
)
from tests.synthetic import write_ct_series

PLAN = LoadPlan(senders=2, instances_per_sender=11, slices_per_series=4)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> list[SenderTraffic]:
    template = write_ct_series(
        tmp_path_factory.mktemp("template"), seed=5, rows=32, slices=4, nodule_count=0
    )
    routed = write_ct_series(
        tmp_path_factory.mktemp("routed"), seed=6, rows=32, slices=2, nodule_count=0
    )
    return write_traffic(
        tmp_path_factory.mktemp("traffic"), PLAN, template.paths, [routed.paths[:1], []]
    )


def test_each_file_carries_the_uids_its_sender_lists(traffic: list[SenderTraffic]) -> None:
    for sender in traffic:
        headers = [dcmread(path) for path in sender.paths]
        assert [str(h.SOPInstanceUID) for h in headers] == list(sender.sop_instance_uids)
        assert [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers] == list(
            sender.sop_instance_uids
        )
        assert {str(h.SeriesInstanceUID) for h in headers} == sender.series_instance_uids
        assert all(h.pixel_array.shape == (32, 32) for h in headers)


def test_uids_are_valid_and_never_shared(traffic: list[SenderTraffic]) -> None:
    instances = [uid for sender in traffic for uid in sender.sop_instance_uids]
    series = [uid for sender in traffic for uid in sender.series_instance_uids]
    assert len(set(instances)) == len(instances) == PLAN.senders * PLAN.instances_per_sender
    assert len(set(series)) == len(series) == 4 + 3  # 3 bulk + 1 routed; 3 bulk (4, 4, 3)
    assert all(is_safe_uid(uid) and not _leading_zero(uid) for uid in instances + series)


def _leading_zero(uid: str) -> bool:
    return any(len(part) > 1 and part.startswith("0") for part in uid.split("."))


def test_bulk_series_are_head_ct_and_the_routed_one_sits_in_the_middle(
    traffic: list[SenderTraffic],
) -> None:
    first = [dcmread(path, stop_before_pixels=True) for path in traffic[0].paths]
    descriptions = [str(h.SeriesDescription) for h in first]
    assert descriptions.count(BULK_SERIES_DESCRIPTION) == 10
    assert descriptions.index("Synthetic chest CT") == 4
    assert {
        h.BodyPartExamined for h in first if h.SeriesDescription == BULK_SERIES_DESCRIPTION
    } == {"HEAD"}


def test_storescu_log_pairs_each_file_with_its_response(traffic: list[SenderTraffic]) -> None:
    sender = traffic[1]
    first, second, third = sender.paths[:3]
    log = "\n".join(
        [
            "I: checking input files ...",
            f"I: Sending file: {first}",
            "I: Sending Store Request (MsgID 1, CT)",
            "XMIT: .",
            "I: Received Store Response (Success)",
            f"I: Sending file: {second}",
            "I: Received Store Response (Refused: OutOfResources)",
            f"I: Sending file: {third}",
            "I: Releasing Association",
        ]
    )

    outcome = read_outcome(sender, 0, log)

    assert outcome.acknowledged == frozenset(sender.sop_instance_uids[:1])
    assert (outcome.requests, outcome.refused) == (2, 1)
    assert outcome.calling_ae_title == "LOAD01"


@pytest.mark.parametrize(
    ("senders", "instances", "slices", "reason"),
    [
        (0, 10, 2, "senders must be 1 to 99"),
        (100, 10, 2, "senders must be 1 to 99"),
        (1, 10, 0, "slices_per_series must be 1 to"),
        (1, 10, 11, "slices_per_series must be 1 to"),
        (1, 9999, 1, "at most 9998 series"),
    ],
)
def test_an_impossible_plan_is_refused(
    senders: int, instances: int, slices: int, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        LoadPlan(senders=senders, instances_per_sender=instances, slices_per_series=slices)
