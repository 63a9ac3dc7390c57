"""``cad-node demo`` end to end: a real node, a real destination, PNGs and a page to look at."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.results.overlay import BANNER_COLOUR, CONTOUR_COLOURS

pytestmark = pytest.mark.slow

FINDING_ROW = re.compile(
    r"<tr><td>Nodule (\d+)</td><td>([\d.]+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td>"
)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    command = [sys.executable, "-m", "cad_node", "demo", "--out", str(out)]
    completed = subprocess.run(
        [*command, "--rows", "256", "--slices", "120"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "index.html" in completed.stdout
    return out


def test_page_lists_the_findings_and_the_warning(demo_out: Path) -> None:
    page = (demo_out / "index.html").read_text(encoding="utf-8")
    assert page.count(NOT_FOR_CLINICAL_USE) >= 2
    rows = FINDING_ROW.findall(page)
    assert rows, "the findings table has a row per finding"
    distances = [float(row[4]) for row in rows]
    assert sum(d < 5.0 for d in distances) >= 2, "the synthetic nodules are found where they are"
    for number, diameter, volume, probability, _ in rows:
        assert 0 < float(diameter) < 60
        assert int(volume) > 0
        assert 0 <= float(probability) <= 1
        assert f'src="seg-{number}.png"' in page


def test_seg_pngs_show_each_finding(demo_out: Path) -> None:
    page = (demo_out / "index.html").read_text(encoding="utf-8")
    for number, *_ in FINDING_ROW.findall(page):
        with Image.open(demo_out / f"seg-{number}.png") as image:
            image.verify()
        pixels = np.asarray(Image.open(demo_out / f"seg-{number}.png").convert("RGB"))
        colour = CONTOUR_COLOURS[(int(number) - 1) % len(CONTOUR_COLOURS)]
        assert np.all(pixels == colour, axis=2).sum() > 8, f"seg-{number}.png has its contour"


def test_overlay_pngs_are_the_burned_in_images(demo_out: Path) -> None:
    overlays = sorted(demo_out.glob("overlay-*.png"))
    assert overlays
    for path in overlays:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape[1] >= 512
        assert np.all(pixels[:8] == BANNER_COLOUR, axis=2).mean() > 0.5
        marks = np.zeros(pixels.shape[:2], dtype=bool)
        for colour in CONTOUR_COLOURS:
            marks |= np.all(pixels == colour, axis=2)
        assert marks.sum() > 8, f"{path.name} shows a contour"
