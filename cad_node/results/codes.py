"""Every coded concept cad-node writes into a SEG or SR, in one place.

Codes come from pydicom's code dictionary (PS3.16 Annex D for DCM, SNOMED CT
and UCUM as PS3.16 lists them) wherever it holds them, so none is invented
here; the one LOINC procedure code is the LOINC code pydicom also lists.
"""

from types import MappingProxyType

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cad_node.domain import FindingType

# Finding types (PS3.16 CID 6102 / CID 7151 for segments).
NODULE: Code = codes.SCT.Nodule
"""SCT 27925004 "Nodule"."""
MASS: Code = codes.SCT.Mass
"""SCT 4147007 "Mass"."""
INDIVIDUAL_CALCIFICATION: Code = codes.SCT.IndividualCalcification
"""SCT 129770007 "Individual Calcification"."""
CALCIFICATION_CLUSTER: Code = codes.DCM.CalcificationCluster
"""DCM 111105 "Calcification Cluster"."""

# Categories (PS3.16 CID 7150 "Segmentation Property Categories").
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
"""SCT 49755003, the category of a lesion segment and of a finding."""

# Anatomy (PS3.16 CID 4 "Anatomic Region").
LUNG: Code = codes.SCT.Lung
"""SCT 39607008 "Lung", the finding site and segment anatomic region."""

# Measurements (PS3.16 CID 7470 / TID 300) and their UCUM units (CID 7181).
DIAMETER: Code = codes.SCT.Diameter
"""SCT 81827009 "Diameter" (here: of the sphere of equal volume)."""
VOLUME: Code = codes.SCT.Volume
"""SCT 118565006 "Volume"."""
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
"""DCM 111012 "Certainty of Finding": the likelihood that the finding is of its type.

The concept the CAD SR templates (e.g. PS3.16 TID 4006) use for a detector's
confidence; reported in percent.
"""
MILLIMETER: Code = codes.UCUM.Millimeter
CUBIC_MILLIMETER: Code = codes.UCUM.CubicMillimeter
PERCENT: Code = codes.UCUM.Percent

# Qualitative evaluation of a report without findings (PS3.16 TID 1501).
ABSENT: Code = codes.SCT.Absent
"""SCT 272519000 "Absent": answers "Nodule?" when the model found none."""

# Algorithm identification (PS3.16 TID 4019, CID 7162 "Surface Processing Algorithm Families").
ALGORITHM_FAMILY: Code = codes.DCM.ArtificialIntelligence
"""DCM 123110 "Artificial Intelligence"."""

# Report context (PS3.16 TID 1500).
PROCEDURE_CT_CHEST = Code("24627-2", "LN", "CT Chest")
"""LOINC 24627-2, the procedure reported (PS3.16 CID 100 is extensible)."""
DEVICE: Code = codes.DCM.Device
"""DCM 121007 "Device", the Observer Type (PS3.16 TID 1002) of every report."""
DEVICE_OBSERVER_NAME = "cad-node"
"""Device Observer Name (PS3.16 TID 1004) of every report."""

FINDING_TYPE_CODES: MappingProxyType[FindingType, Code] = MappingProxyType(
    {FindingType.NODULE: NODULE}
)
"""The code of every ``FindingType``; a new member needs its code here."""


def finding_type_code(finding_type: FindingType) -> Code:
    """The SNOMED CT / DCM code of ``finding_type``.

    Raises
    ------
    ValueError
        When the type has no code yet.
    """
    try:
        return FINDING_TYPE_CODES[finding_type]
    except KeyError:
        raise ValueError(f"no code for finding type {finding_type!r}") from None
