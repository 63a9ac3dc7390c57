"""The chest CT part of the demo: a phantom with known nodules, its SEG and SR drawn.

Each SEG segment is drawn on the slice through its centre with the true nodule
centres as blue crosses; the SR gives each finding's diameter, volume and
certainty (PS3.16 TID 1500); the burned-in overlay images are kept as received.
"""

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom import Dataset, dcmread
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.demo.node import DemoError
from cad_node.demo.page import cell, figures
from cad_node.demo.received import MARKS, StudyResults, capture_image, enlarged, save_png
from cad_node.domain import ImageVolume
from cad_node.imaging.volume import load_volume
from cad_node.results.overlay import CONTOUR_COLOURS, LUNG_WINDOW, contour, lung_window
from cad_node.synth.ct import NoduleTruth, PhantomSpec, generate_ct, load_ground_truth, write_series

TRUTH_COLOUR = (0, 200, 255)
"""The crosses on the true nodule centres."""


@dataclass(frozen=True, slots=True)
class CtSpec:
    """The synthetic chest CT of the demo."""

    rows: int = 384
    slices: int = 200
    slice_thickness_mm: float = 1.25
    seed: int = 20261125
    nodule_count: int = 3


@dataclass(frozen=True, slots=True)
class CtExam:
    """The written series and its ground truth."""

    paths: tuple[Path, ...]
    study_instance_uid: str
    nodules: tuple[NoduleTruth, ...]


@dataclass(frozen=True, slots=True)
class ReportedFinding:
    """One finding as the SR reports it and the SEG locates it."""

    label: str
    diameter_mm: float | None
    volume_mm3: float | None
    probability: float | None
    centre_patient_mm: tuple[float, float, float] | None
    truth_distance_mm: float | None
    png: str | None


def synthesize_ct(spec: CtSpec, folder: Path) -> CtExam:
    """Write the synthetic series (files in InstanceNumber order) and read its truth."""
    phantom = generate_ct(
        PhantomSpec(
            rows=spec.rows,
            slices=spec.slices,
            slice_thickness_mm=spec.slice_thickness_mm,
            seed=spec.seed,
            nodule_count=spec.nodule_count,
            diameter_range_mm=(8.0, 20.0),
        )
    )
    paths = sorted(write_series(phantom, folder, series_description="Synthetic chest CT demo"))
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return CtExam(tuple(paths), study_uid, tuple(load_ground_truth(folder).nodules))


# --- drawing -------------------------------------------------------------------------------------


def segment_masks(seg: Dataset, volume: ImageVolume) -> dict[int, npt.NDArray[np.bool_]]:
    """Each segment of ``seg`` as a mask in ``volume``'s index space (frames by source image)."""
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    numbers = list(segmentation.segment_numbers)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids),
        segment_numbers=numbers,
        assert_missing_frames_are_empty=True,
    )
    return {n: pixels[..., i].astype(bool) for i, n in enumerate(numbers)}


def draw_seg_slice(
    volume: ImageVolume,
    mask: npt.NDArray[np.bool_],
    label: str,
    colour: tuple[int, int, int],
    truths: Sequence[NoduleTruth],
) -> Image.Image:
    """The slice through a segment's centre, its contour, label and the true nodule centres."""
    k = round(float(np.argwhere(mask)[:, 0].mean()))
    grey = lung_window(volume.voxels[k], *LUNG_WINDOW)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    rgb[contour(mask[k], max(1, volume.shape[1] // 256))] = colour
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    for truth in truths:
        tk, tr, tc = truth.centre_index
        if abs(tk - k) * volume.spacing_mm[0] <= truth.diameter_mm / 2:
            draw.line((tc - 4, tr, tc + 4, tr), fill=TRUTH_COLOUR)
            draw.line((tc, tr - 4, tc, tr + 4), fill=TRUTH_COLOUR)
    image = enlarged(image)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width - 1, 13), fill=(170, 0, 0))
    draw.text((3, 1), f"{label} (SEG), slice {k + 1}  {NOT_FOR_CLINICAL_USE}", fill="white")
    return image


def sr_measurements(sr: Dataset) -> dict[str, dict[str, float]]:
    """For each tracking identifier ("Nodule 1" ...), its measurements by name (PS3.16 TID 1500)."""
    content = hd.sr.srread(sr.filename).content
    if not isinstance(content, hd.sr.MeasurementReport):
        return {}
    found: dict[str, dict[str, float]] = {}
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    for group in groups:
        values = found.setdefault(str(group.tracking_identifier), {})
        for measurement in group.get_measurements():
            values.setdefault(measurement.name.meaning.lower(), float(measurement.value))
    return found


def _pick(values: dict[str, float], word: str) -> float | None:
    return next((v for name, v in values.items() if word in name), None)


def _probability(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def reported_findings(
    seg: Dataset | None,
    sr: Dataset,
    volume: ImageVolume,
    truths: Sequence[NoduleTruth],
    out_dir: Path,
) -> list[ReportedFinding]:
    """The findings, with the SEG drawn on the slice through each one (PNG in ``out_dir``)."""
    measurements = sr_measurements(sr)
    masks = segment_masks(seg, volume) if seg is not None else {}
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence} if seg else {}
    findings = []
    for number, mask in tqdm(masks.items(), desc="draw CT SEG", unit="nodule"):
        label = labels[number]
        centre_index = np.argwhere(mask).mean(axis=0)
        centre = tuple(float(v) for v in volume.index_to_patient(tuple(centre_index)))
        distance = min((math.dist(centre, t.centre_patient_mm) for t in truths), default=None)
        colour = CONTOUR_COLOURS[(number - 1) % len(CONTOUR_COLOURS)]
        png = f"seg-{number}.png"
        draw_seg_slice(volume, mask, label, colour, truths).save(out_dir / png)
        values = measurements.get(label, {})
        findings.append(
            ReportedFinding(
                label=label,
                diameter_mm=_pick(values, "diameter"),
                volume_mm3=_pick(values, "volume"),
                probability=_probability(_pick(values, "certainty")),
                centre_patient_mm=centre,  # type: ignore[arg-type]  # 3 values from a 3-vector
                truth_distance_mm=distance,
                png=png,
            )
        )
    return findings


def save_overlay_pngs(overlays: Sequence[Dataset], out_dir: Path) -> list[str]:
    """The received burned-in Secondary Capture images as PNGs, in InstanceNumber order."""
    return [
        save_png(capture_image(ds), out_dir, f"overlay-{int(ds.InstanceNumber)}.png")
        for ds in tqdm(overlays, desc="draw CT overlays", unit="img")
    ]


# --- the section ---------------------------------------------------------------------------------


def ct_section(exam: CtExam, results: StudyResults, out_dir: Path) -> str:
    """Draw the CT's results into ``out_dir``; the page section that shows them.

    Raises
    ------
    DemoError
        When no SR arrived for the CT.
    """
    sr = results.sr
    if sr is None:
        raise DemoError("no SR arrived for the chest CT")
    volume = load_volume([dcmread(path) for path in exam.paths])
    segs = results.segs
    findings = reported_findings(segs[0] if segs else None, sr, volume, exam.nodules, out_dir)
    overlay_pngs = save_overlay_pngs(results.captures(MARKS), out_dir)
    return render_ct_section(findings, exam.nodules, overlay_pngs)


def render_ct_section(
    findings: Sequence[ReportedFinding], truths: Sequence[NoduleTruth], overlay_pngs: Sequence[str]
) -> str:
    """The CT's findings, its ground truth and its pictures, as HTML."""
    rows = "\n".join(
        f"<tr><td>{html.escape(f.label)}</td><td>{cell(f.diameter_mm, 1)}</td>"
        f"<td>{cell(f.volume_mm3, 0)}</td><td>{cell(f.probability, 2)}</td>"
        f"<td>{cell(f.truth_distance_mm, 1)}</td></tr>"
        for f in findings
    )
    truth_rows = "\n".join(
        f"<tr><td>{t.label}</td><td>{t.diameter_mm:.1f}</td><td>{html.escape(str(t.nodule_type))}"
        f"</td><td>{', '.join(f'{v:.1f}' for v in t.centre_patient_mm)}</td></tr>"
        for t in truths
    )
    pictures = [*(f.png for f in findings if f.png), *overlay_pngs]
    return _SECTION.format(
        count=len(findings),
        truth_count=len(truths),
        rows=rows or '<tr><td colspan="5">no finding</td></tr>',
        truth_rows=truth_rows,
        pictures=figures(pictures),
    )


_SECTION = """<section id="ct">
<h2>Chest CT: lung nodules</h2>
<p>{count} finding(s) reported for {truth_count} synthetic nodule(s).</p>
<h3>Findings (from the SR and SEG the node sent)</h3>
<table id="findings"><tr><th>Finding</th><th>Diameter (mm)</th><th>Volume (mm&sup3;)</th>
<th>Probability</th><th>Distance to nearest true nodule (mm)</th></tr>
{rows}
</table>
<h3>Ground truth</h3>
<table id="truth"><tr><th>Nodule</th><th>Diameter (mm)</th><th>Type</th>
<th>Centre x, y, z (mm)</th></tr>
{truth_rows}
</table>
<p>seg-N.png: the SEG mask drawn on the slice through each finding (blue crosses: true
centres); overlay-N.png: the burned-in Secondary Capture images as received.</p>
{pictures}
</section>
"""
