"""Every coded concept cad-node writes into a SEG, SR or other result object, in one place.

Public codes first: DCM, SNOMED CT and UCUM codes come from pydicom's code dictionary
(PS3.16 Annex D and the SNOMED CT / UCUM concepts PS3.16 lists) wherever it holds them;
the others are SNOMED CT or LOINC codes checked against a published value set (a PS3.16
context group, or a US eCQM / VSAC value set as published in public FHIR sources), each
cited where it is defined.  Concepts with no public code found (hard and soft exudate,
referable diabetic retinopathy, the probability of each ICDR grade, the equivalent-sphere
diameter method) use the private coding scheme ``99CADNODE`` (PS3.16 Section 8.2: a
designator beginning with "99" is private), declared in every object that uses it through
:func:`declare_private_coding_scheme` (Coding Scheme Identification Sequence, PS3.3
C.12.1.1.2).  docs/conformance.md lists every private code with its meaning.
"""

from types import MappingProxyType
from typing import overload

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cad_node.domain import FindingType
from cad_node.domain.results import (
    AnatomicRegion,
    Concept,
    MeasurementKind,
    Procedure,
    RegionFinding,
)

# The private coding scheme (PS3.16 Section 8.2).
PRIVATE_SCHEME_DESIGNATOR = "99CADNODE"
"""Coding Scheme Designator of the concepts no public scheme was found to hold."""
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


def is_private(code: Code) -> bool:
    """Whether ``code`` is in the ``99CADNODE`` scheme (and its object must declare it)."""
    return code.scheme_designator == PRIVATE_SCHEME_DESIGNATOR


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
"""SCT 81827009 "Diameter" (of a CT finding: of the sphere of equal volume, see
:data:`EQUIVALENT_SPHERE_DIAMETER_METHOD`)."""
LONG_AXIS: Code = codes.SCT.LongAxis
"""SCT 103339001 "Long axis" (PS3.16 CID 7470 "Linear Measurement"): the largest extent
of a finding's mask on its image."""
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

# Measurement methods (PS3.16 TID 300 row 3, concept SCT 370129005 "Measurement Method").
SUM_OF_SEGMENTED_VOXELS: Code = codes.DCM.SumOfSegmentedVoxelMethodForVolume
"""DCM 126030 "Sum of segmented voxel method for volume" (PS3.16 CID 7474 "General Volume
Calculation Method"): a volume is the mask's voxel count times the voxel volume."""
EQUIVALENT_SPHERE_DIAMETER_METHOD: Code = _private(
    "EQSPHEREDIAM", "Diameter of sphere of equal volume"
)
"""99CADNODE: the diameter of the sphere whose volume is the mask's volume.

No DCM or SCT method concept for it: PS3.16 CID 7474 holds volume methods only, and
"Volume of sphere" (DCM 121222) is a volume, not a diameter.
"""

# Qualitative evaluation of a report without findings (PS3.16 TID 1501).
ABSENT: Code = codes.SCT.Absent
"""SCT 272519000 "Absent": answers "Nodule?" when the model found none, and is ICDR grade 0."""
FINDING: Code = codes.DCM.Finding
"""DCM 121071 "Finding": asked "Absent" in a planar report without findings or assessments."""

# Algorithm identification (PS3.16 TID 4019, CID 7162 "Surface Processing Algorithm Families").
ALGORITHM_FAMILY: Code = codes.DCM.ArtificialIntelligence
"""DCM 123110 "Artificial Intelligence"."""

# Contributing Equipment of the algorithm (IHE AIR, Evidence Creator).
IHE_SCHEME_DESIGNATOR = "99IHE"
PROCESSING_ALGORITHM = Code("Newcode1", IHE_SCHEME_DESIGNATOR, "Processing Algorithm")
"""Purpose of Reference of the algorithm's Contributing Equipment item: IHE AIR's code
(Newcode1, 99IHE, 1630 "Processing Algorithm"), an IHE temporary code with no DCM
equivalent yet."""

# Report context (PS3.16 TID 1500).
PROCEDURE_CT_CHEST = Code("24627-2", "LN", "CT Chest")
"""LOINC 24627-2, the procedure reported (PS3.16 CID 100 is extensible)."""
DEVICE: Code = codes.DCM.Device
"""DCM 121007 "Device", the Observer Type (PS3.16 TID 1002) of every report."""
DEVICE_OBSERVER_NAME = "cad-node"
"""Device Observer Name (PS3.16 TID 1004) of every report."""

# Fundus lesion types (PS3.16 CID 7151 is extensible).
HAEMORRHAGE: Code = codes.SCT.Hemorrhage
"""SCT 50960005 "Hemorrhage"; the finding site (SCT 5665001 "Retina") makes it retinal."""
MICROANEURYSM: Code = Code("25412000", "SCT", "Diabetic retinal microaneurysm")
"""SCT 25412000 "Diabetic retinal microaneurysm (disorder)", as the SNOMED CT expansion of
the public FHIR diabetes value sets lists it (not in pydicom's dictionary)."""
HARD_EXUDATE: Code = _private("HARDEXUDATE", "Hard exudate")
"""99CADNODE: no SNOMED CT concept for a retinal hard exudate was found in a verifiable
source (SCT 39832008 "Retinal exudates" does not tell hard from soft)."""
SOFT_EXUDATE: Code = _private("SOFTEXUDATE", "Soft exudate (cotton wool spot)")
"""99CADNODE: no SNOMED CT concept for a cotton wool spot was found in a verifiable source."""

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
BREAST_SUSPICION: Code = codes.DCM.AssessmentCategory
"""DCM 111005 "Assessment Category": the breast's BI-RADS category at the operating threshold."""
SUSPICIOUS: Code = Code("397144001", "SCT", "4 - Suspicious")
"""SCT 397144001, BI-RADS category 4, with the code meaning of PS3.16 CID 6027 "Assessment
from BI-RADS" (included in CID 6026 "Mammography Assessment"); pydicom's dictionary holds
the code as "MammographyAssessmentCategory4SuspiciousAbnormalityBiopsyShouldBeConsidered"."""
NOT_SUSPICIOUS: Code = Code("397140005", "SCT", "1 - Negative")
"""SCT 397140005, BI-RADS category 1, with the code meaning of PS3.16 CID 6027; pydicom's
dictionary holds the code as "MammographyAssessmentCategory1Negative"."""

# Per-eye diabetic retinopathy (ICDR scale) as SNOMED CT disorders.
ICDR_GRADE: Code = Code("4855003", "SCT", "Retinopathy due to diabetes mellitus")
"""SCT 4855003, asked per eye; its value is the ICDR grade's SNOMED CT concept, or "Absent"
(SCT 272519000) for grade 0. Code as listed in the US eCQM diabetic retinopathy value sets."""
ICDR_GRADE_CODES: tuple[Code, ...] = (
    ABSENT,
    Code("312903003", "SCT", "Mild nonproliferative retinopathy due to diabetes mellitus"),
    Code("312904009", "SCT", "Moderate nonproliferative retinopathy due to diabetes mellitus"),
    Code("312905005", "SCT", "Severe nonproliferative retinopathy due to diabetes mellitus"),
    Code("59276001", "SCT", "Proliferative retinopathy due to diabetes mellitus"),
)
"""ICDR grade 0 to 4: "Absent", then SCT 312903003 / 312904009 / 312905005 / 59276001, the
concepts of the eCQM value set "Level of Severity of Retinopathy Findings"
(2.16.840.1.113883.3.526.3.1283) with their SNOMED CT preferred terms."""
REFERABLE_DR: Code = _private("REFERABLEDR", "Referable diabetic retinopathy")
"""99CADNODE: no SNOMED CT or LOINC concept for "referable" DR (ICDR grade 2 or more)."""
YES: Code = codes.SCT.Yes
"""SCT 373066001 "Yes"."""
NO: Code = codes.SCT.No
"""SCT 373067005 "No"."""
PROBABILITY: Code = codes.DCM.Probability
"""DCM 122157 "Probability"."""


def icdr_grade_code(grade: int, meaning: str | None = None) -> Code:
    """The SNOMED CT code of ICDR grade ``grade`` (0 to 4): "Absent" for grade 0.

    ``meaning`` is accepted for older callers and ignored: each code has its own meaning.
    """
    del meaning
    if not 0 <= grade < len(ICDR_GRADE_CODES):
        raise ValueError(f"ICDR grade must be 0 to {len(ICDR_GRADE_CODES) - 1}, got {grade}")
    return ICDR_GRADE_CODES[grade]


def icdr_grade_of(code_value: str) -> int:
    """The ICDR grade whose :func:`icdr_grade_code` has Code Value ``code_value``.

    Raises
    ------
    ValueError
        When ``code_value`` is no ICDR grade's code.
    """
    for grade, code in enumerate(ICDR_GRADE_CODES):
        if code.value == code_value:
            return grade
    raise ValueError(f"{code_value!r} is no ICDR grade code")


def icdr_probability_code(grade: int, meaning: str) -> Code:
    """The 99CADNODE name of the probability of ICDR grade ``grade`` ("ICDRP0" ...).

    No public concept names the probability of one DR severity level.
    """
    return _private(f"ICDRP{grade}", f"Probability of {meaning}")


# Explanation maps (the DCM codes of visual explanations of AI results).
VISUAL_EXPLANATION: Code = codes.DCM.VisualExplanation
"""DCM 130401 "Visual explanation", the concept of an explanation image in the SR."""
GRAD_CAM: Code = codes.DCM.GradientWeightedClassActivation
"""DCM 130403 "Gradient-weighted class activation"."""
COMMENT: Code = codes.DCM.Comment
"""DCM 121106 "Comment"."""
NO_UNITS: Code = codes.UCUM.NoUnits
"""UCUM "1" (no units), the unit of a heatmap's relative values (Parametric Map)."""
CLASS_ACTIVATION: Code = codes.DCM.ClassActivation
"""DCM 130402 "Class activation", the quantity of a CAM heatmap."""
SALIENCY: Code = codes.DCM.Saliency
"""DCM 130404 "Saliency", the quantity of a heatmap made some other way."""

# Key Object Selection (PS3.16 TID 2010).
OF_INTEREST: Code = codes.DCM.OfInterest
"""DCM 113000 "Of Interest" (PS3.16 CID 7010), the title of the KOS flagging images with
findings."""

# Procedures reported (PS3.16 TID 1500 row 4; CID 100 is extensible).
PROCEDURE_MAMMOGRAPHY: Code = codes.SCT.Mammography
"""SCT 71651007 "Mammography"."""
PROCEDURE_FUNDUS_PHOTOGRAPHY: Code = Code("20067007", "SCT", "Ocular fundus photography")
"""SCT 20067007 "Ocular fundus photography (procedure)", as the eCQM value set "Retinal or
Dilated Eye Exam" (2.16.840.1.113883.3.464.1003.115.12.1088) lists it."""

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
    """The SNOMED CT / DCM (or 99CADNODE) code of ``finding_type``.

    Raises
    ------
    ValueError
        When the type has no code yet.
    """
    try:
        return FINDING_TYPE_CODES[finding_type]
    except KeyError:
        raise ValueError(f"no code for finding type {finding_type!r}") from None


def concept_code(concept: Concept) -> Code:
    """The code of a site model's concept (from its LABELS.yaml), as the admin wrote it."""
    return Code(concept.value, concept.scheme, concept.meaning)


def finding_codes(finding: RegionFinding) -> tuple[Code, Code]:
    """(property type, category) of ``finding``: its Segmented Property Type and Category,
    and the SR's finding type and finding category.

    A site model's finding names both through its concept; a shipped model's finding type
    is a morphologically abnormal structure.

    Raises
    ------
    ValueError
        When the finding type has no code yet.
    """
    if finding.concept is not None:
        return (
            concept_code(finding.concept.property_type),
            concept_code(finding.concept.category),
        )
    if finding.finding_type is None:
        raise ValueError("a finding without a finding type or a concept")
    return finding_type_code(finding.finding_type), MORPHOLOGICALLY_ABNORMAL_STRUCTURE


# Site models (TID 1500 content of models the admin adds, docs/conformance.md).
VOLUME_SURFACE: Code = codes.DCM.VolumeSurface
"""DCM 121231 "Volume Surface": a detection box's ellipsoid (SCOORD3D) in a TID 1411 group."""
CLASSIFICATION: Code = codes.SCT.Classification
"""SCT 278201002 "Classification": a classifier's qualitative evaluation, valued with the
predicted class's concept."""


PROCEDURE_IMAGING: Code = codes.SCT.ImagingProcedure
"""SCT 363679005 "Imaging procedure": the procedure of a model family the node does not know."""

REGION_CODES: MappingProxyType[AnatomicRegion, Code] = MappingProxyType(
    {
        AnatomicRegion.LUNG: LUNG,
        AnatomicRegion.BREAST: BREAST,
        AnatomicRegion.RETINA: RETINA,
    }
)
"""The finding site / segment anatomic region of each region."""

PROCEDURE_CODES: MappingProxyType[Procedure, Code] = MappingProxyType(
    {
        Procedure.CT_CHEST: PROCEDURE_CT_CHEST,
        Procedure.MAMMOGRAPHY: PROCEDURE_MAMMOGRAPHY,
        Procedure.FUNDUS_PHOTOGRAPHY: PROCEDURE_FUNDUS_PHOTOGRAPHY,
        Procedure.IMAGING: PROCEDURE_IMAGING,
    }
)
"""The Procedure Reported (PS3.16 TID 1500 row 4) of each procedure."""

MEASUREMENT_CONCEPTS: MappingProxyType[MeasurementKind, tuple[Code, Code]] = MappingProxyType(
    {
        MeasurementKind.EQUIVALENT_SPHERE_DIAMETER: (DIAMETER, MILLIMETER),
        MeasurementKind.LARGEST_EXTENT: (LONG_AXIS, MILLIMETER),
        MeasurementKind.VOLUME: (VOLUME, CUBIC_MILLIMETER),
        MeasurementKind.AREA: (AREA, SQUARE_MILLIMETER),
    }
)
"""(concept name, UCUM unit) of each measurement kind (PS3.16 TID 300)."""

MEASUREMENT_METHODS: MappingProxyType[MeasurementKind, Code] = MappingProxyType(
    {
        MeasurementKind.EQUIVALENT_SPHERE_DIAMETER: EQUIVALENT_SPHERE_DIAMETER_METHOD,
        MeasurementKind.VOLUME: SUM_OF_SEGMENTED_VOXELS,
    }
)
"""The Measurement Method of the kinds whose concept name alone does not say what they are.

"Long axis" already names the largest extent; an area is the mask's pixel count times the
pixel area, a method PS3.16 CID 7473 has no code for, so it carries none.
"""


@overload
def region_code(region: AnatomicRegion) -> Code: ...


@overload
def region_code(region: AnatomicRegion | None) -> Code | None: ...


def region_code(region: AnatomicRegion | None) -> Code | None:
    """The finding site of ``region``; None when the report names none."""
    return None if region is None else REGION_CODES[region]


def procedure_code(procedure: Procedure) -> Code:
    """The Procedure Reported (PS3.16 TID 1500) of ``procedure``."""
    return PROCEDURE_CODES[procedure]


def measurement_concept(kind: MeasurementKind) -> tuple[Code, Code]:
    """(concept name, unit) of a measurement kind."""
    return MEASUREMENT_CONCEPTS[kind]


def measurement_method(kind: MeasurementKind) -> Code | None:
    """The Measurement Method (PS3.16 TID 300 row 3) saying what a measurement is, or None."""
    return MEASUREMENT_METHODS.get(kind)


# Abstention and the validated domain (TID 1500 "Qualitative Evaluations", docs/conformance.md).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
"""UMLS C0034375, the TID 1500 container (row 12) of evaluations of the whole image set."""
IMAGE_SET_ASSESSMENT: Code = _private("IMAGESETASSESS", "Image set assessment")
"""99CADNODE: whether the model assessed the image set, valued :data:`NOT_EVALUATED` or
:data:`ASSESSED_OUTSIDE_DOMAIN`.  No public concept names an algorithm's assessment of its
input as such."""
NOT_EVALUATED: Code = codes.SCT.NotEvaluated
"""SCT 373121007 "Not Evaluated" (PS3.16 CID 3703): the model withheld its answer."""
ASSESSED_OUTSIDE_DOMAIN: Code = _private("ASSESSEDOUTSIDE", "Assessed outside its validated domain")
"""99CADNODE: the model answered although the input was outside its domain (a rule's
``run_anyway``); its findings may not hold."""
OUT_OF_DOMAIN_REASON: Code = _private("DOMAINREASON", "Reason input is out of domain")
"""99CADNODE: why the input was outside the model's domain; no public "reason" concept fits."""
OUTSIDE_VALIDATED_DOMAIN: Code = _private("OUTSIDEDOMAIN", "Outside the model's validated domain")
"""99CADNODE: a header attribute is outside the domain the model's manifest declares."""
OUT_OF_DISTRIBUTION: Code = _private("OUTOFDISTRIB", "Out of the model's training distribution")
"""99CADNODE: the model's learned out-of-distribution score exceeds its threshold."""
OOD_SCORE: Code = _private("OODSCORE", "Out-of-distribution score")
"""99CADNODE: the model's out-of-distribution score of the input (UCUM "1"); the input is
out of distribution when it exceeds the :data:`THRESHOLD_VALUE` under it."""
