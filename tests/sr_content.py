"""Reading the content tree of a TID 1500 SR in tests: groups, items, numbers, codes, sites."""

from pydicom import Dataset

IMAGING_MEASUREMENTS = "126010"
"""DCM 126010 "Imaging Measurements", the container of the measurement groups."""
TRACKING_UID = "112040"
FINDING_SITE = "363698007"


def code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def groups(sr: Dataset) -> list[Dataset]:
    (container,) = [entry for entry in sr.ContentSequence if code(entry) == IMAGING_MEASUREMENTS]
    return list(container.ContentSequence)


def items(group: Dataset, code_value: str) -> list[Dataset]:
    return [entry for entry in group.ContentSequence if code(entry) == code_value]


def item(group: Dataset, code_value: str) -> Dataset:
    found = items(group, code_value)
    assert len(found) == 1, f"{len(found)} items named {code_value}"
    return found[0]


def tracking_uid(group: Dataset) -> str:
    return str(item(group, TRACKING_UID).UID)


def numbers(group: Dataset) -> dict[str, float]:
    return {
        code(entry): float(entry.MeasuredValueSequence[0].NumericValue)
        for entry in group.ContentSequence
        if entry.ValueType == "NUM"
    }


def coded(group: Dataset) -> dict[str, str]:
    return {
        code(entry): str(entry.ConceptCodeSequence[0].CodeValue)
        for entry in group.ContentSequence
        if entry.ValueType == "CODE"
    }


def site(group: Dataset) -> tuple[str, str]:
    finding_site = item(group, FINDING_SITE)
    (laterality,) = finding_site.ContentSequence
    return str(finding_site.ConceptCodeSequence[0].CodeValue), str(
        laterality.ConceptCodeSequence[0].CodeValue
    )
