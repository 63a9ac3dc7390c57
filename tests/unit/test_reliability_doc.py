"""docs/reliability.md sections: each test module rewrites its own and keeps the rest."""

from pathlib import Path

import pytest

from tests.reliability_doc import read_section, write_section

FAULTS_TABLE = "# Reliability under faults\n\n| Scenario | Lost |\n|---|---:|\n| kill -9 | 0 |\n"


def test_a_section_is_appended_after_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "reliability.md"
    path.write_text(FAULTS_TABLE)

    write_section(path, "load", "## Load\n\n| Lost |\n| 0 |")

    text = path.read_text()
    assert text.startswith(FAULTS_TABLE)
    assert text.endswith("<!-- BEGIN load -->\n## Load\n\n| Lost |\n| 0 |\n<!-- END load -->\n")


def test_rewriting_a_section_replaces_only_its_body(tmp_path: Path) -> None:
    path = tmp_path / "reliability.md"
    path.write_text(FAULTS_TABLE)
    write_section(path, "load", "first run")
    write_section(path, "fuzz", "fuzz figures")

    write_section(path, "load", "second run\nwith two lines")

    assert read_section(path, "load") == "second run\nwith two lines"
    assert read_section(path, "fuzz") == "fuzz figures"
    assert path.read_text().startswith(FAULTS_TABLE)
    assert "first run" not in path.read_text()


def test_a_missing_file_gets_the_section_alone(tmp_path: Path) -> None:
    path = tmp_path / "reliability.md"

    write_section(path, "load", "figures")

    assert path.read_text() == "<!-- BEGIN load -->\nfigures\n<!-- END load -->\n"
    assert read_section(tmp_path / "absent.md", "load") is None


def test_a_body_with_regex_and_backslashes_is_written_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "reliability.md"
    write_section(path, "load", "old")

    write_section(path, "load", r"a \1 \g<0> $ (.*) body")

    assert read_section(path, "load") == r"a \1 \g<0> $ (.*) body"


@pytest.mark.parametrize("name", ["", "Load", "load test", "-->", "load\n"])
def test_a_section_name_that_could_break_the_markers_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="section name"):
        write_section(tmp_path / "reliability.md", name, "body")
