"""Every coded concept cad-node writes into a SEG or SR, in one place.

Codes come from pydicom's code dictionary (PS3.16 Annex D for DCM, SNOMED CT
and UCUM as PS3.16 lists them) wherever it holds them; the one LOINC procedure
code is the LOINC code pydicom also lists.  Concepts pydicom's dictionary does
not hold (fundus lesion types, the ICDR grades, the model's own verdicts) use
the private coding scheme ``99CADNODE`` (PS3.16 Section 8.2: a designator
beginning with "99" is private), declared in every object that uses it through
:data:`PRIVATE_CODING_SCHEME` (Coding Scheme Identification Sequence, PS3.3
C.12.1.1.2).
"""

from types import MappingProxyType

from pydicom import Dataset
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
FINDING: Code = codes.DCM.Finding
"""DCM 121071 "Finding": asked "Absent" in a planar report without findings or assessments."""

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

# The private coding scheme (PS3.16 Section 8.2).
PRIVATE_SCHEME_DESIGNATOR = "99CADNODE"
"""Coding Scheme Designator of the concepts no public scheme in pydicom's dictionary holds."""
PRIVATE_SCHEME_NAME = "cad-node private codes"
PRIVATE_SCHEME_RESPONSIBLE = "cad-node project"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME_DESIGNATOR, meaning)


def private_coding_scheme_item() -> Dataset:
    """An item of the Coding Scheme Identification Sequence (0008,0110) declaring ``99CADNODE``.

    PS3.3 C.12.1.1.2: an object using a private coding scheme identifies it.
    """
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME_DESIGNATOR
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_RESPONSIBLE
    return item


def declare_private_coding_scheme(dataset: Dataset) -> None:
    """Add the ``99CADNODE`` item to ``dataset``'s Coding Scheme Identification Sequence."""
    items = list(dataset.get("CodingSchemeIdentificationSequence", []))
    if not any(i.get("CodingSchemeDesignator") == PRIVATE_SCHEME_DESIGNATOR for i in items):
        items.append(private_coding_scheme_item())
    dataset.CodingSchemeIdentificationSequence = items


# Fundus lesion types: pydicom's dictionary holds only the generic haemorrhage.
HAEMORRHAGE: Code = codes.SCT.Hemorrhage
"""SCT 50960005 "Hemorrhage"; the finding site (SCT 5665001 "Retina") makes it retinal."""
MICROANEURYSM: Code = _private("MICROANEURYSM", "Retinal microaneurysm")
"""99CADNODE: no microaneurysm code in pydicom's dictionary."""
HARD_EXUDATE: Code = _private("HARDEXUDATE", "Hard exudate")
"""99CADNODE: no exudate code in pydicom's dictionary."""
SOFT_EXUDATE: Code = _private("SOFTEXUDATE", "Soft exudate (cotton wool spot)")
"""99CADNODE: no cotton wool spot code in pydicom's dictionary."""

# Anatomy and laterality (PS3.16 CID 4, CID 244 "Laterality").
BREAST: Code = codes.SCT.Breast
"""SCT 76752008 "Breast", finding site of mammography findings and assessments."""
RETINA: Code = codes.SCT.Retina
"""SCT 5665001 "Retina", finding site of fundus lesions and DR grades."""
RIGHT: Code = codes.SCT.Right
"""SCT 24028007 "Right"."""
LEFT: Code = codes.SCT.Left
"""SCT 7771000 "Left"."""
AREA: Code = codes.SCT.Area
"""SCT 42798000 "Area" (of a mask on its image)."""
SQUARE_MILLIMETER: Code = codes.UCUM.SquareMillimeter

# Per-breast suspicion (PS3.16 TID 1501 measurement and qualitative evaluation).
PROBABILITY_OF_CANCER: Code = codes.DCM.ProbabilityOfCancer
"""DCM 111047 "Probability of cancer", the breast suspicion score in percent."""
THRESHOLD_VALUE: Code = codes.DCM.ThresholdValue
"""DCM 122411 "Threshold Value", the operating threshold the score is read at."""
BREAST_SUSPICION: Code = _private("SUSPICION", "Breast suspicion at operating threshold")
SUSPICIOUS: Code = _private("SUSPICIOUS", "Suspicious")
NOT_SUSPICIOUS: Code = _private("NOTSUSPICIOUS", "Not suspicious")

# Per-eye diabetic retinopathy (ICDR scale; no SNOMED CT DR severity codes in pydicom).
ICDR_GRADE: Code = _private("ICDRGRADE", "Diabetic retinopathy grade (ICDR)")
REFERABLE_DR: Code = _private("REFERABLEDR", "Referable diabetic retinopathy")
YES: Code = codes.SCT.Yes
"""SCT 373066001 "Yes"."""
NO: Code = codes.SCT.No
"""SCT 373067005 "No"."""
PROBABILITY: Code = codes.DCM.Probability
"""DCM 122157 "Probability"."""


def icdr_grade_code(grade: int, meaning: str) -> Code:
    """The 99CADNODE code of ICDR grade ``grade`` ("ICDR0" ... "ICDR4")."""
    return _private(f"ICDR{grade}", meaning)


def icdr_probability_code(grade: int, meaning: str) -> Code:
    """The 99CADNODE name of the probability of ICDR grade ``grade`` ("ICDRP0" ...)."""
    return _private(f"ICDRP{grade}", f"Probability of {meaning}")


# Explanation maps (the DCM codes of visual explanations of AI results).
VISUAL_EXPLANATION: Code = codes.DCM.VisualExplanation
"""DCM 130401 "Visual explanation", the concept of an explanation image in the SR."""
GRAD_CAM: Code = codes.DCM.GradientWeightedClassActivation
"""DCM 130403 "Gradient-weighted class activation"."""
COMMENT: Code = codes.DCM.Comment
"""DCM 121106 "Comment"."""

# Procedures reported (PS3.16 TID 1500 row 4; CID 100 is extensible).
PROCEDURE_MAMMOGRAPHY: Code = codes.SCT.Mammography
"""SCT 71651007 "Mammography"."""
PROCEDURE_FUNDUS_PHOTOGRAPHY: Code = _private("FUNDUSPHOTO", "Colour fundus photography")
"""99CADNODE: no fundus photography procedure code in pydicom's dictionary."""

FINDING_TYPE_CODES: MappingProxyType[FindingType, Code] = MappingProxyType(
    {
        FindingType.NODULE: NODULE,
        FindingType.MASS: MASS,
        FindingType.CALCIFICATION_CLUSTER: CALCIFICATION_CLUSTER,
        FindingType.MICROANEURYSM: MICROANEURYSM,
        FindingType.HAEMORRHAGE: HAEMORRHAGE,
        FindingType.HARD_EXUDATE: HARD_EXUDATE,
        FindingType.SOFT_EXUDATE: SOFT_EXUDATE,
    }
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
