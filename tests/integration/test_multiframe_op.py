"""A fundus exam with one eye as a two-frame Ophthalmic Photography image, end to end with
real peers: DCMTK storescu -> cad-node serve -> DCMTK storescp.

The referable eye comes as a stereo pair in one instance (both views in one OP 8 Bit
Image, PS3.3 A.39.1); each frame is graded into its eye, and the SEG, SR and burned-in
images that come out reference the frames their findings lie on (ReferencedFrameNumber).
"""

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from cad_node.synth import fundus
from tests import sr_content as content
from tests.integration.test_planar_spine import (
    ICDR_GRADE,
    IMAGE_REGION,
    REFERABLE_DR,
    SIDE,
    YES,
    _by_class,
    _exchange,
)
from tests.results_inputs import stacked_frames
from tests.unit.test_multiframe_planar import referenced_frames, source_frames

pytestmark = pytest.mark.slow

SOURCE_OF_GROUP = "121112"


def _stereo_pair(path: Path, out: Path) -> str:
    """``path``'s photograph and a copy shifted 3 columns as two frames of one instance."""
    photograph = dcmread(path)
    other_view = photograph.copy()
    other_view.PixelData = np.roll(photograph.pixel_array, 3, axis=1).tobytes()
    stacked_frames(photograph, other_view).save_as(out, enforce_file_format=True)
    return str(photograph.SOPInstanceUID)


def test_a_stereo_pair_in_one_op_instance_is_read_frame_by_frame(
    tmp_path: Path, fundus_exam: tuple[Path, fundus.FundusTruth]
) -> None:
    folder, truth = fundus_exam
    referable = truth.eye("R")
    sent = tmp_path / "sent"
    sent.mkdir()
    pair = _stereo_pair(folder / referable.file, sent / "OD.dcm")
    other = truth.eye("L")
    (sent / other.file).write_bytes((folder / other.file).read_bytes())

    received = _exchange(tmp_path, sorted(sent.glob("*.dcm")))  # job DONE, all valid

    (sr,) = _by_class(received, Comprehensive3DSRStorage)
    (right,) = [
        g
        for g in content.groups(sr)
        if ICDR_GRADE in content.coded(g) and content.site(g)[1] == SIDE["R"]
    ]
    assert content.coded(right)[REFERABLE_DR] == YES
    source = content.item(right, SOURCE_OF_GROUP)
    assert str(source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == pair
    assert referenced_frames(source) == [1, 2]

    regions = [
        content.item(g, IMAGE_REGION) for g in content.groups(sr) if content.items(g, IMAGE_REGION)
    ]
    on_pair = [
        r.ContentSequence[0]
        for r in regions
        if r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == pair
    ]
    assert on_pair, "the referable eye's lesions are marked"
    assert all(
        len(referenced_frames(item)) == 1 and referenced_frames(item)[0] in {1, 2}
        for item in on_pair
    )

    segs = [
        seg
        for seg in _by_class(received, SegmentationStorage)
        if seg.SourceImageSequence[0].ReferencedSOPInstanceUID == pair
    ]
    assert segs
    assert all(len(source_frames(seg)) == 1 for seg in segs)
    overlays = [
        ds
        for ds in _by_class(received, SecondaryCaptureImageStorage)
        if ds.SourceImageSequence[0].ReferencedSOPInstanceUID == pair
    ]
    assert overlays
    assert all(int(ds.SourceImageSequence[0].ReferencedFrameNumber) in {1, 2} for ds in overlays)
