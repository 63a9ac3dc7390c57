"""The demo's naming and wording of its pictures, without running a node (issue #24, item 8)."""

from pathlib import Path

from pydicom import Dataset

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.demo.ct import capture_labels, finding_number
from cad_node.demo.fundus import EyeReport, disagreements
from cad_node.demo.page import figures
from cad_node.synth.fundus import EyeTruth


def test_a_burned_in_image_is_named_by_the_findings_it_shows() -> None:
    capture = Dataset()
    capture.ImageComments = f"{NOT_FOR_CLINICAL_USE}; Nodule 4, Nodule 12"
    labels = capture_labels(capture)
    assert labels == ["Nodule 4", "Nodule 12"]
    assert [finding_number(label, 0) for label in labels] == [4, 12]
    assert finding_number("spleen", 3) == 3  # an unnumbered label keeps the image's number
    assert capture_labels(Dataset()) == []


def test_figures_say_what_each_picture_shows() -> None:
    page = figures(["seg-4.png", "x.png"], {"seg-4.png": "Nodule 4 in the SEG, slice 2/9"})
    assert "<figcaption>seg-4.png: Nodule 4 in the SEG, slice 2/9</figcaption>" in page
    assert "<figcaption>x.png</figcaption>" in page


def _eye(eye: str, grade: int) -> EyeTruth:
    laterality = "R" if eye == "OD" else "L"
    return EyeTruth(
        laterality=laterality,
        sop_instance_uid="1.2.3",
        file="f.dcm",
        grade=grade,
        rows=64,
        columns=64,
        pixel_spacing_mm=0.01,
        lesion_counts={},
        venous_beading=False,
        neovascularisation=False,
        preretinal_haemorrhage=False,
        masks_path=Path("masks.npz"),
        fovea_rc=(32.0, 32.0),
        disc_rc=(32.0, 12.0),
    )


def test_an_eye_graded_no_dr_with_marks_is_said_to_disagree() -> None:
    reports = [
        EyeReport(_eye("OD", 3), 3, 70.0, True, 4),
        EyeReport(_eye("OS", 0), 0, 74.0, False, 2),
        EyeReport(_eye("OS", 0), 0, 90.0, False, 0),
    ]
    (said,) = disagreements(reports)
    assert said.startswith("OS: graded ICDR 0")
    assert "marked 2 candidate(s): the grader and the detector disagree" in said
