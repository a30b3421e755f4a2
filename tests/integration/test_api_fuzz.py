"""Fuzz the served HTTP API from its own OpenAPI document: whatever schemathesis generates,
no answer is a 5xx, and every answer matches the document (status, content, schema)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import bearer, served_api
from tests.support.cli import cli_ok

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true", "WEBHOOKS_API_RATE_LIMIT": "100000/m"}


@pytest.fixture(scope="module")
def api_url(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_api(env, tmp_path_factory.mktemp("api")) as url:
        yield url


@pytest.fixture(scope="module")
def api_key(env: dict[str, str]) -> str:
    project = f"proj_{secrets.token_hex(4)}"
    return str(
        cli_ok(env, "key", "create", "--project", project, "--mode", "test", "--json")["key"]
    )


# Each operation's cases are drawn from its own strategy (schemathesis's pytest plugin does not
# collect under this pytest), so a failure names the operation.
@pytest.mark.slow
def test_no_input_makes_the_api_answer_5xx_or_off_its_schema(api_url: str, api_key: str) -> None:
    schema = schemathesis.openapi.from_url(api_url + "/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    # The stream never ends while its client stays: test_api_stream.py checks its parameters.
    operations = [op for op in operations if not op.path.endswith("/stream")]

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=api_url, headers=bearer(api_key), timeout=15)
            case.validate_response(
                response,
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        fuzz()
