"""Test inputs: real images no one here made, as DICOM instances a node receives.

- pydicom's own test files (``CT_small.dcm``, ``MR_small.dcm``) and those of the installed
  ``pydicom-data`` package (``RG1_UNCI.dcm``, a Philips CR chest radiograph; ``RG3_UNCI.dcm``,
  a Fuji CR of an extremity; ``MR2_UNCI.dcm``, a Philips MR): read from disk, never
  downloaded (:func:`real_file`);
- a real CT slice (pydicom-data's ``explicit_VR-UN.dcm``, an abdominal CT) repeated into a
  volume, its pixels as the scanner made them, under the synthetic generator's headers
  (:func:`real_ct_series`);
- scikit-image's ``skimage.data.retina()``, a real colour fundus photograph (public
  domain, from Wikimedia Commons), wrapped in an Ophthalmic Photography 8 Bit Image
  (:func:`retina_photograph`).

These are test inputs only, never training data. Each leaves as a new series (fresh UIDs)
so one file can go to several rules in one test.
"""

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread
from pydicom.data import data_manager, get_testdata_file
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import generate_uid

from cad_node.synth.dicom_planar import StudyInfo, fundus_dataset

RETINA_SEED = 990_017
"""Seed of the wrapper's study (its UIDs and placeholder patient), not of any pixel."""


def real_file(name: str) -> Path:
    """A file of pydicom's wheel or of the installed ``pydicom-data``, found locally.

    Raises
    ------
    FileNotFoundError
        Neither holds ``name`` (nothing is downloaded).
    """
    shipped = get_testdata_file(name, download=False)
    if isinstance(shipped, str):
        return Path(shipped)
    for source in data_manager.external_data_sources().values():
        for path in source.get_paths(f"**/{name}", data_manager.DataTypes.DATASET):
            return Path(path)
    raise FileNotFoundError(f"no local test file {name} (pydicom, pydicom-data)")


def as_new_series(path: Path, series_description: str) -> Dataset:
    """The instance at ``path`` as the only image of a new series in a new study."""
    dataset = dcmread(path)
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SeriesDescription = series_description
    return dataset


def retina_photograph(series_description: str, manufacturer: str | None = None) -> Dataset:
    """skimage's real fundus photograph (1411 x 1411 RGB, a right eye) as an OP image.

    ``manufacturer`` None leaves Manufacturer out (the camera is unknown); a value names
    it, e.g. the synthetic generator's, to let the image pass a header-only domain check.
    """
    from skimage import data  # imported only where a test asks for the retina

    retina = data.retina()  # type: ignore[no-untyped-call]  # skimage.data has no hints
    pixels = np.ascontiguousarray(retina, dtype=np.uint8)
    study = StudyInfo.from_seed(RETINA_SEED, "fundus")
    dataset = fundus_dataset(
        pixels,
        study=study,
        laterality="R",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=None,
    )
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SeriesDescription = series_description
    if manufacturer is None:
        del dataset.Manufacturer
    else:
        dataset.Manufacturer = manufacturer
    return dataset


def real_ct_slices_hu(name: str) -> tuple[npt.NDArray[np.int16], tuple[float, float]]:
    """The Hounsfield units and pixel spacing (mm) of a real single-slice CT file."""
    dataset = dcmread(real_file(name))
    hu = apply_modality_lut(dataset.pixel_array, dataset)
    row, column = (float(v) for v in dataset.PixelSpacing)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), (row, column)


def real_ct_series(
    name: str, out_dir: Path, series_description: str, *, slices: int = 64, seed: int = 990_500
) -> list[Path]:
    """The real CT slice in ``name`` repeated ``slices`` times 2.5 mm apart, written as a CT
    series under the synthetic generator's headers (Manufacturer, body part CHEST), so it
    passes a header-only domain check: only a learned score can tell it apart."""
    from cad_node.synth.dicom_ct import SeriesInfo, write_slices
    from cad_node.synth.lesions import Grid

    hu, (row, column) = real_ct_slices_hu(name)
    volume = np.repeat(hu[None], slices, axis=0)
    grid = Grid((slices, hu.shape[0], hu.shape[1]), (2.5, row, column), (0.0, 0.0, 0.0))
    info = SeriesInfo.from_seed(
        seed,
        series_description=series_description,
        patient_id=f"REAL-CT-{seed}",
        images_in_acquisition=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_slices(volume, grid, info, out_dir)
