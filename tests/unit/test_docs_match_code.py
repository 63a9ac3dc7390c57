"""Docs that match the code: the usage examples' calls fit their functions' signatures."""

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import cad_node.results
from cad_node.domain.results import planar_report, volume_report
from cad_node.results import build_result_objects, result_uids
from cad_node.results.options import ResultOptions

REPO = Path(__file__).parents[2]
CALLABLES: dict[str, Callable[..., object]] = {
    "volume_report": volume_report,
    "planar_report": planar_report,
    "build_result_objects": build_result_objects,
    "result_uids": result_uids,
    "at": ResultOptions().at,
    "for_model": ResultOptions().for_model,
}


def _example(docstring: str) -> str:
    """The indented code block after the first ``::`` of ``docstring``."""
    block = docstring.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return inspect.cleandoc(block)


def test_the_results_example_calls_what_exists_as_it_is_called() -> None:
    assert cad_node.results.__doc__ is not None
    calls = [
        node
        for node in ast.walk(ast.parse(_example(cad_node.results.__doc__)))
        if isinstance(node, ast.Call)
    ]
    checked = set()
    for call in calls:
        name = call.func.attr if isinstance(call.func, ast.Attribute) else ast.unparse(call.func)
        if name in CALLABLES:
            arguments = {keyword.arg: None for keyword in call.keywords if keyword.arg}
            inspect.signature(CALLABLES[name]).bind(*call.args, **arguments)
            checked.add(name)
    assert checked == set(CALLABLES) - {"planar_report"}


def test_no_source_cites_notes_a_reader_cannot_open() -> None:
    cited = [
        str(path.relative_to(REPO))
        for folder in ("cad_node", "tests", "bench", "docs")
        for path in (REPO / folder).rglob("*")
        if path.suffix in {".py", ".md"}
        and path != Path(__file__)
        and re.search(r"FIELD-NOTES", path.read_text(encoding="utf-8"))
    ]
    assert cited == []


def test_the_readme_layout_names_every_package_and_nothing_else() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    listed = set(re.findall(r"^  ([a-z_]+)/ ", layout, flags=re.MULTILINE))
    packages = {path.parent.name for path in (REPO / "cad_node").glob("*/__init__.py")}
    assert listed == packages
