"""Property-based run of the admin API from its own OpenAPI schema (schemathesis): no
generated input, sent with an admin token, makes the node answer 5xx.

Real HTTP to a running node on 127.0.0.1. Each operation gets its own hypothesis run
(schemathesis' pytest plugin does not load under pytest 9, so the strategies are used
directly).
"""

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cad_node.app import Node
from tests.integration.conftest import ADMIN_TOKEN, base_url, in_process_node, node_settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import Case  # noqa: E402 - after the importorskip
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def admin_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with in_process_node(node_settings(tmp_path_factory.mktemp("schema"))) as running:
        yield running


def test_no_generated_request_makes_a_server_error(admin_node: Node) -> None:
    url = base_url(admin_node)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: Case[Any]) -> None:
            case.call_and_validate(base_url=url, headers=headers, checks=[not_a_server_error])

        no_server_error()
