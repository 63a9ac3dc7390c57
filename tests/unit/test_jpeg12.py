"""JPEG Extended (Process 2 & 4) with 12-bit samples decodes through GDCM (imaging.jpeg12).

DCMTK's dcmcjpeg writes a synthetic CT volume as 12-bit lossy JPEG, the default lossy
transfer syntax for CT (PS3.5 A.4.1); pydicom alone cannot decode it.
"""

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGExtended12Bit

from cad_node.imaging.volume import load_volume
from tests.dcmtk import program
from tests.synthetic import write_ct_series

MAX_HU_ERROR = 40.0
"""dcmcjpeg's default quality (90) on 12-bit CT: errors of a few HU, far below this."""


def test_a_12_bit_jpeg_extended_series_decodes_close_to_its_source(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", seed=11, rows=64, slices=4, nodule_count=1)
    encoded = []
    for path in series.paths:
        encoded.append(tmp_path / f"jpeg-{path.name}")
        subprocess.run(
            [program("dcmcjpeg"), "+ee", str(path), str(encoded[-1])], check=True, timeout=60
        )
    first = pydicom.dcmread(encoded[0])
    assert first.file_meta.TransferSyntaxUID == JPEGExtended12Bit
    assert first.BitsStored == 12

    volume = load_volume([pydicom.dcmread(path) for path in encoded])

    error = np.abs(volume.voxels - series.hu.astype(np.float32))
    assert float(error.max()) < MAX_HU_ERROR
