"""The chest CT part of the demo: a phantom with known nodules, its SEG and SR drawn.

Each SEG segment is drawn on the slice through its centre with the true nodule
centres as blue crosses; the SR gives each finding's diameter, volume and
certainty (PS3.16 TID 1500); the burned-in overlay images are kept as received.
Every picture of a finding is named by the finding's number ("seg-4.png",
"overlay-4.png" both show "Nodule 4") and captioned with its slice's position.
"""

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset, dcmread
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.demo.node import DemoError
from cad_node.demo.page import cell, figures
from cad_node.demo.received import (
    MARKS,
    StudyResults,
    capture_image,
    enlarged,
    save_png,
    source_sop_instance_uid,
)
from cad_node.domain import ImageVolume
from cad_node.imaging.volume import load_volume
from cad_node.results.overlay import (
    CONTOUR_COLOURS,
    LUNG_WINDOW,
    contour,
    lung_window,
    volume_slice_position,
)
from cad_node.synth.ct import NoduleTruth, PhantomSpec, generate_ct, load_ground_truth, write_series

TRUTH_COLOUR = (0, 200, 255)
"""The crosses on the true nodule centres."""
HEADER_HEIGHT = 22
"""The red title bar over an enlarged SEG picture."""
LABEL_NUMBER = re.compile(r"(\d+)$")
"""The number at the end of a finding's label ("Nodule 4")."""


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
    slice_text: str = ""
    """Where the SEG picture's slice lies: "slice 57/120, z = -123.5 mm"."""
    nearest_truth: str = ""
    """The label of the nearest true nodule."""


@dataclass(frozen=True, slots=True)
class OverlayPicture:
    """A received burned-in image saved for one finding it shows."""

    png: str
    label: str
    slice_text: str


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
    k = seg_slice(mask)
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
    draw.rectangle((0, 0, image.width - 1, HEADER_HEIGHT - 1), fill=(170, 0, 0))
    title = f"{label} (SEG): {volume_slice_position(volume, k)}  {NOT_FOR_CLINICAL_USE}"
    font = ImageFont.load_default(size=HEADER_HEIGHT * 3 // 4)
    draw.text((4, HEADER_HEIGHT / 2), title, fill="white", font=font, anchor="lm")
    return image


def seg_slice(mask: npt.NDArray[np.bool_]) -> int:
    """The slice through a segment's centre (index in its volume)."""
    return round(float(np.argwhere(mask)[:, 0].mean()))


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
        nearest = min(truths, key=lambda t: math.dist(centre, t.centre_patient_mm), default=None)
        distance = None if nearest is None else math.dist(centre, nearest.centre_patient_mm)
        colour = CONTOUR_COLOURS[(number - 1) % len(CONTOUR_COLOURS)]
        png = f"seg-{finding_number(label, number)}.png"
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
                slice_text=volume_slice_position(volume, seg_slice(mask)),
                nearest_truth="" if nearest is None else str(nearest.label),
            )
        )
    return findings


def finding_number(label: str, default: int) -> int:
    """The number of a finding's label ("Nodule 4" -> 4); ``default`` for an unnumbered one."""
    found = LABEL_NUMBER.search(label)
    return int(found.group(1)) if found else default


def capture_labels(capture: Dataset) -> list[str]:
    """The labels of the findings a burned-in image shows, from its Image Comments
    ("NOT FOR CLINICAL USE; Nodule 1, Nodule 2", as :mod:`cad_node.results.overlay` writes)."""
    _, _, labels = str(capture.get("ImageComments", "")).partition("; ")
    return [label.strip() for label in labels.split(",") if label.strip()]


def save_overlay_pngs(
    overlays: Sequence[Dataset], volume: ImageVolume, out_dir: Path
) -> list[OverlayPicture]:
    """Each received burned-in image as a PNG per finding it shows, named by the finding's
    number ("overlay-4.png" shows "Nodule 4"), with its slice's position."""
    slice_of = {uid: k for k, uid in enumerate(volume.sop_instance_uids)}
    pictures = []
    for ds in tqdm(overlays, desc="draw CT overlays", unit="img"):
        k = slice_of.get(source_sop_instance_uid(ds))
        where = "" if k is None else volume_slice_position(volume, k)
        for label in capture_labels(ds) or [f"image {int(ds.InstanceNumber)}"]:
            name = f"overlay-{finding_number(label, int(ds.InstanceNumber))}.png"
            saved = save_png(capture_image(ds), out_dir, name)
            pictures.append(OverlayPicture(saved, label, where))
    return pictures


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
    overlays = save_overlay_pngs(results.captures(MARKS), volume, out_dir)
    return render_ct_section(findings, exam.nodules, overlays)


def _pictures(
    findings: Sequence[ReportedFinding], overlays: Sequence[OverlayPicture]
) -> tuple[list[str], dict[str, str]]:
    """Per finding its SEG picture then its burned-in image; captions saying what each shows."""
    names: list[str] = []
    captions: dict[str, str] = {}
    by_label = {o.label: o for o in overlays}
    for finding in findings:
        if finding.png:
            names.append(finding.png)
            captions[finding.png] = f"{finding.label} in the SEG, {finding.slice_text}"
        overlay = by_label.pop(finding.label, None)
        if overlay is not None:
            names.append(overlay.png)
            captions[overlay.png] = f"{overlay.label} burned in, {overlay.slice_text}"
    for overlay in by_label.values():
        names.append(overlay.png)
        captions[overlay.png] = f"{overlay.label} burned in, {overlay.slice_text}"
    return names, captions


def render_ct_section(
    findings: Sequence[ReportedFinding],
    truths: Sequence[NoduleTruth],
    overlays: Sequence[OverlayPicture],
) -> str:
    """The CT's findings, its ground truth and its pictures, as HTML."""
    rows = "\n".join(
        f"<tr><td>{html.escape(f.label)}</td><td>{cell(f.diameter_mm, 1)}</td>"
        f"<td>{cell(f.volume_mm3, 0)}</td><td>{cell(f.probability, 2)}</td>"
        f"<td>{cell(f.truth_distance_mm, 1)}</td><td>{html.escape(f.nearest_truth)}</td></tr>"
        for f in findings
    )
    truth_rows = "\n".join(
        f"<tr><td>{t.label}</td><td>{t.diameter_mm:.1f}</td><td>{html.escape(str(t.nodule_type))}"
        f"</td><td>{', '.join(f'{v:.1f}' for v in t.centre_patient_mm)}</td></tr>"
        for t in truths
    )
    names, captions = _pictures(findings, overlays)
    return _SECTION.format(
        count=len(findings),
        truth_count=len(truths),
        rows=rows or '<tr><td colspan="6">no finding</td></tr>',
        truth_rows=truth_rows,
        pictures=figures(names, captions),
    )


_SECTION = """<section id="ct">
<h2>Chest CT: lung nodules</h2>
<p>{count} finding(s) reported for {truth_count} synthetic nodule(s).</p>
<h3>Findings (from the SR and SEG the node sent)</h3>
<table id="findings"><tr><th>Finding</th><th>Diameter (mm)</th><th>Volume (mm&sup3;)</th>
<th>P(nodule)</th><th>Distance to nearest true nodule (mm)</th><th>Nearest true nodule</th></tr>
{rows}
</table>
<p>P(nodule): the model's probability that the finding is a nodule (0 to 1), the
certainty in the SR; the burned-in images give it as a percentage.</p>
<h3>Ground truth</h3>
<table id="truth"><tr><th>True nodule</th><th>Diameter (mm)</th><th>Type</th>
<th>Centre x, y, z (mm)</th></tr>
{truth_rows}
</table>
<p>Finding N is drawn twice, both named by its number: seg-N.png, the SEG mask on the
slice through its centre (blue crosses: true centres), and overlay-N.png, the burned-in
Secondary Capture image the node sent, with the slice's number and position in its
corner. A finding's number is the one in the SR, the SEG and the image.</p>
{pictures}
</section>
"""
