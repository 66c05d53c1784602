"""Property-based requests generated from the API's own OpenAPI schema (schemathesis), valid and
invalid, with an admin token so that every handler sees them: no request gets a server error, and
every refusal is the JSON error format."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from flead_dagster_tests.test_api import ADMIN_KEY, api_harness

EXAMPLES_PER_OPERATION_AND_MODE = 40


@pytest.fixture(scope="module")
def api(services_env):
    with api_harness() as harness:
        yield harness


def test_generated_requests_never_get_a_server_error(api):
    schema = schemathesis.openapi.from_url(f"{api.server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    assert {"/api/local-update", "/api/global-model", "/api/anomalies", "/api/config"} <= paths
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    seen_statuses: set[int] = set()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, api.server.url, headers, seen_statuses)

    assert 422 in seen_statuses and 200 in seen_statuses  # both sides of validation were exercised
    assert api.http.get("/health").status_code == 200


def exercise(operation, mode: GenerationMode, url: str, headers: dict, seen_statuses: set[int]) -> None:
    """Send generated requests for one operation; fail on a server error or a non-JSON refusal."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(base_url=url, headers=headers)
        seen_statuses.add(response.status_code)
        where = f"{case.method} {case.path} ({mode.value}): {response.status_code} {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400:
            assert "error" in response.json(), where

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid: an operation without parameters or body has no negative cases.
        assert mode is GenerationMode.NEGATIVE, f"no valid request generated for {operation.label}"
