"""A fundus camera that sends Secondary Capture images (Modality OT) gets the same results.

The shipped rule routes such images (SOP class SC or VL Photographic, body part EYE or a
"fundus" series description) to fundus_dr; the results must name the retina, not the
Modality, and pass dciodvfy.
"""

import datetime
from pathlib import Path

import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage

from cad_node.domain.results import AnatomicRegion
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models.base import reads_image_sets
from cad_node.models.registry import ModelRegistry
from cad_node.results import codes
from cad_node.results.build import build_planar_objects
from cad_node.results.options import ResultOptions
from cad_node.results.uids import result_uids
from cad_node.synth import fundus
from tests import sr_content as content
from tests.dicom_validation import assert_valid_dicom
from tests.unit.test_results_objects import every_object

RETINA = codes.region_code(AnatomicRegion.RETINA).value


def as_secondary_capture(path: Path) -> Dataset:
    dataset = dcmread(path)
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.Modality = "OT"
    dataset.ConversionType = "DI"  # digital interface (SC Equipment module, Type 1)
    return dataset


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_secondary_capture_fundus_pair_gives_valid_retina_results(tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    fundus.write_study(fundus.generate_fundus(fundus.FundusSpec(seed=5, grades=(3, 0))), exam)
    datasets = [as_secondary_capture(path) for path in sorted(exam.glob("*.dcm"))]
    image_set = load_image_set(datasets)
    assert image_set.modality == "OT"

    model = ModelRegistry(device="cpu").get("fundus_dr")
    assert reads_image_sets(model)
    result = model.predict(image_set)
    objects = build_planar_objects(
        datasets,
        image_set,
        result,
        result_uids("test/1/fundus_dr"),
        ResultOptions().at(datetime.datetime(2026, 11, 25, 20, 0)),
        overlay=True,
        gsps=True,
    )

    out = tmp_path / "results"
    out.mkdir()
    for number, dataset in enumerate(every_object(objects)):
        path = out / f"{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
    sites = {content.site(group)[0] for group in content.groups(objects.sr)}
    assert sites == {RETINA}
    assert objects.segs, "the severe eye's lesions are segmented"
    assert len(objects.parametric_maps) == len(result.explanations)
