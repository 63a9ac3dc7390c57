"""The demo's one-page summary: a section per exam between two NOT FOR CLINICAL USE banners."""

import html
from collections.abc import Mapping, Sequence

from cad_node import NOT_FOR_CLINICAL_USE


def cell(value: float | None, digits: int) -> str:
    """A number for a table cell, "n/a" when there is none."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def figures(names: Sequence[str], captions: Mapping[str, str] | None = None) -> str:
    """An HTML figure per PNG, captioned with its name and, where given, what it shows."""
    said = captions or {}
    return "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}"
        + (f": {html.escape(said[name])}" if name in said else "")
        + "</figcaption></figure>"
        for name in names
    )


def table_row(cells: Sequence[str]) -> str:
    """One HTML table row of already escaped cells."""
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_page(sections: Sequence[str], exam_names: Sequence[str], seconds: float) -> str:
    """The whole page: banner, what was sent, each exam's section, banner."""
    return _PAGE.format(
        banner=NOT_FOR_CLINICAL_USE,
        exams=", ".join(html.escape(name) for name in exam_names),
        seconds=seconds,
        sections="\n".join(sections),
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cad-node demo</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.banner {{ background: #a00; color: #fff; font-weight: bold; padding: .4em; text-align: center; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
td, th {{ border: 1px solid #999; padding: .2em .6em; text-align: right; }}
figure {{ display: inline-block; margin: .3em; vertical-align: top; }} img {{ max-width: 512px; }}
section {{ border-top: 2px solid #444; margin-top: 1.5em; }}
</style></head><body>
<div class="banner">{banner}</div>
<h1>cad-node demo: synthetic exams through a real node</h1>
<p>Exams sent to one node and read back from its destination: {exams}; {seconds:.0f} s in all.
Every image is synthetic; the models are trained on synthetic data only.</p>
{sections}
<div class="banner">{banner}</div>
</body></html>
"""
