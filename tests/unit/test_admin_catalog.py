"""The journal's model switches and destinations (store/model_modes_and_destinations.py),
on SQLite."""

import pytest

from cad_node.config import DestinationSettings
from cad_node.domain.states import ResultKind
from cad_node.errors import ConfigError
from cad_node.routing.rules import RuleMode
from cad_node.store.model_modes_and_destinations import (
    DestinationBook,
    current_destinations,
    delete_destination,
    model_mode,
    model_modes,
    parse_destination,
    result_kinds_of,
    save_destination,
    set_model_mode,
)
from tests.conftest import FakeClock, Journal

PACS = DestinationSettings(host="127.0.0.1", port=104, ae_title="PACS")
VIEWER = DestinationSettings(
    host="localhost", port=105, ae_title="VIEWER", results=(ResultKind.SR,)
)


def test_a_model_is_active_until_switched(journal: Journal) -> None:
    clock = FakeClock()
    with journal.sessionmaker.begin() as session:
        assert model_mode(session, "lung") is RuleMode.ACTIVE
        assert set_model_mode(session, "lung", RuleMode.OFF, "carol", clock()) is RuleMode.ACTIVE
    with journal.sessionmaker.begin() as session:
        assert model_mode(session, "lung") is RuleMode.OFF
        assert set_model_mode(session, "lung", RuleMode.SHADOW, "carol", clock()) is RuleMode.OFF
    with journal.sessionmaker() as session:
        assert model_modes(session) == {"lung": RuleMode.SHADOW}


def test_destinations_are_seeded_once_and_a_deleted_seed_stays_deleted(journal: Journal) -> None:
    clock = FakeClock()
    book = DestinationBook(journal.sessionmaker, clock)
    book.seed({"pacs": PACS})
    assert book.current() == {"pacs": PACS}

    with journal.sessionmaker.begin() as session:
        assert save_destination(session, "viewer", VIEWER, "carol", clock()) is True
        assert delete_destination(session, "pacs", "carol", clock()) is True
        assert delete_destination(session, "pacs", "carol", clock()) is False
    book.seed({"pacs": PACS})  # a restart with the same config
    assert book.current() == {"viewer": VIEWER}

    with journal.sessionmaker.begin() as session:
        assert save_destination(session, "pacs", PACS, "carol", clock()) is True  # re-added
        assert save_destination(session, "pacs", PACS, "carol", clock()) is False  # edited
        assert result_kinds_of(current_destinations(session)) == {
            "pacs": (ResultKind.SEG, ResultKind.SR),
            "viewer": (ResultKind.SR,),
        }


def test_a_destination_is_checked_by_the_config_model() -> None:
    with pytest.raises(ConfigError, match="destination: port"):
        parse_destination({"host": "pacs", "port": 0, "ae_title": "PACS"}, "destination")
    with pytest.raises(ConfigError, match="results"):
        parse_destination({"host": "h", "port": 1, "ae_title": "A", "results": []}, "destination")
