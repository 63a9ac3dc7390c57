"""A ``database_url`` whose driver does not import is answered with what to install
(issue 24): one line, the ``postgresql`` extra named, the password never quoted."""

import sys
from pathlib import Path

import pytest

from cad_node.errors import ConfigError
from cad_node.store.db import POSTGRESQL_EXTRA, make_engine, missing_driver_message

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://cad:{PASSWORD}@db.example/cadnode",
        f"postgresql://cad:{PASSWORD}@db.example/cadnode",  # SQLAlchemy 2.1's default: psycopg
    ],
)
def test_postgresql_without_psycopg_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails

    with pytest.raises(ConfigError) as raised:
        make_engine(url)

    message = str(raised.value)
    assert "'psycopg' is not installed" in message
    assert message.endswith(POSTGRESQL_EXTRA)
    assert POSTGRESQL_EXTRA == "pip install 'cad-node[postgresql]'"
    assert PASSWORD not in message
    assert "\n" not in message


def test_another_postgresql_driver_is_named_with_the_supported_one() -> None:
    error = ModuleNotFoundError("No module named 'pg8000'", name="pg8000")

    message = missing_driver_message(f"postgresql+pg8000://cad:{PASSWORD}@h/db", error)

    assert message == (
        "database_url (postgresql+pg8000://...): its driver module 'pg8000' is not installed: "
        "install it, or use postgresql+psycopg:// with pip install 'cad-node[postgresql]'"
    )


def test_a_driver_that_is_there_but_does_not_load_is_quoted_in_one_line() -> None:
    error = ImportError("no pq wrapper available.\nAttempts made:\n- couldn't import 'c'")

    message = missing_driver_message(f"postgresql+psycopg://cad:{PASSWORD}@h/db", error)

    assert "its driver does not load (no pq wrapper available.)" in message
    assert message.endswith(POSTGRESQL_EXTRA)
    assert "\n" not in message
    assert PASSWORD not in message


def test_a_database_cad_node_does_not_use_points_at_the_two_it_does() -> None:
    error = ModuleNotFoundError("No module named 'MySQLdb'", name="MySQLdb")

    message = missing_driver_message(f"mysql://cad:{PASSWORD}@h/db", error)

    assert "'MySQLdb' is not installed" in message
    assert "SQLite" in message
    assert "postgresql+psycopg://" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("url", [f"nosuchdb://cad:{PASSWORD}@h/db", "not a url"])
def test_an_unknown_or_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a database URL cad-node can use") as raised:
        make_engine(url)

    assert PASSWORD not in str(raised.value)


def test_scale_out_guide_quotes_the_message_as_it_is() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "scale-out.md").read_text()
    error = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    message = missing_driver_message(f"postgresql+psycopg://cad:{PASSWORD}@h/db", error)

    assert f"`cad-node: error: {message}`" in " ".join(guide.split())
