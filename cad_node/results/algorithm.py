"""Who made a result: the algorithm's identification and its Contributing Equipment item.

IHE AI Results (AIR), Evidence Creator: every object names the algorithm that produced it
twice over, in the content (PS3.16 TID 4019 in each SR measurement group, the Segment
Algorithm Identification of each SEG segment) and in the Enhanced General Equipment's
Contributing Equipment Sequence (PS3.3 C.7.5.1), with Purpose of Reference "Processing
Algorithm" and a Device UID that changes whenever the model's name, version or weights do.
"""

import datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.valuerep import DT

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ModelIdentity
from cad_node.results import codes
from cad_node.results.uids import algorithm_device_uid


def segment_algorithm(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """Segment Algorithm Identification (PS3.3 C.8.20.2, CID 7162 family) of a SEG segment."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.ALGORITHM_FAMILY,
        version=model.version,
        parameters={
            "model_family": model.family,
            "weights_sha256": model.weights_sha256,
            "use": NOT_FOR_CLINICAL_USE,
        },
    )


def report_algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """PS3.16 TID 4019 of an SR group: name, version, and the weights hash with the warning."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[model.parameters],
        family=codes.ALGORITHM_FAMILY,
    )


def algorithm_equipment_item(
    model: ModelIdentity, manufacturer: str, when: datetime.datetime
) -> Dataset:
    """The Contributing Equipment item (PS3.3 C.7.5.1) of the algorithm that made an object."""
    item = Dataset()
    purpose = Dataset()
    purpose.CodeValue = codes.PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = codes.PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = codes.PROCESSING_ALGORITHM.meaning
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = manufacturer
    item.ManufacturerModelName = model.name[:64]
    item.SoftwareVersions = model.version[:64]
    item.DeviceUID = algorithm_device_uid(model.name, model.version, model.weights_sha256)
    item.ContributionDateTime = DT(when)
    item.ContributionDescription = f"{model.parameters}"[:64]
    return item


def add_algorithm_equipment(
    dataset: Dataset, model: ModelIdentity, manufacturer: str, when: datetime.datetime
) -> None:
    """Append the algorithm's Contributing Equipment item to ``dataset`` (once)."""
    item = algorithm_equipment_item(model, manufacturer, when)
    items = [
        existing
        for existing in dataset.get("ContributingEquipmentSequence", [])
        if existing.get("DeviceUID") != item.DeviceUID
    ]
    dataset.ContributingEquipmentSequence = [*items, item]
    declare_ihe_coding_scheme(dataset)


def declare_ihe_coding_scheme(dataset: Dataset) -> None:
    """Declare ``99IHE`` in the Coding Scheme Identification Sequence (PS3.3 C.12.1.1.2)."""
    items = list(dataset.get("CodingSchemeIdentificationSequence", []))
    if any(i.get("CodingSchemeDesignator") == codes.IHE_SCHEME_DESIGNATOR for i in items):
        return
    item = Dataset()
    item.CodingSchemeDesignator = codes.IHE_SCHEME_DESIGNATOR
    item.CodingSchemeName = "IHE temporary codes"
    item.CodingSchemeResponsibleOrganization = "IHE International"
    dataset.CodingSchemeIdentificationSequence = [*items, item]
