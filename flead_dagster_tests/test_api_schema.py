"""Property-based requests generated from the API's own OpenAPI schema (schemathesis), valid and
invalid, with an admin token so that every handler sees them: no request gets a server error, every
refusal is the JSON error format, and every success matches its documented schema. The OpenAPI document
itself: a typed schema for every success, and one page shape for every list."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from flead_dagster_tests.helpers.api import ADMIN_KEY, api_harness

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
        elif 200 <= response.status_code < 300:  # what it answers is what its schema says
            case.validate_response(response, checks=[response_schema_conformance, content_type_conformance])

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid: an operation without parameters or body has no negative cases.
        assert mode is GenerationMode.NEGATIVE, f"no valid request generated for {operation.label}"


LISTS = (
    "/api/history",
    "/api/devices",
    "/api/anomalies",
    "/api/events",
    "/api/devices/{device_id}/accept-normal",
)
PAGE_FIELDS = {"items", "limit", "next"}
STORAGE_FIELDS = {"_id", "ts_text", "ts_us", "start_us", "end_us", "start_text"}
OLD_PAGE_FIELDS = {"versions", "devices", "total", "total_exact", "next_offset"}


def test_every_success_has_a_typed_schema_and_every_list_one_page_shape(api):
    document = api.http.get("/openapi.json").json()
    components = document["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        ref = schema.get("$ref", "")
        return components[ref.removeprefix("#/components/schemas/")] if ref else schema

    def typed(schema: dict, media_type: str) -> bool:
        if "$ref" in schema:
            target = resolve(schema)
            return target.get("type") == "object" and bool(target.get("properties"))
        if schema.get("type") == "array":
            return typed(schema.get("items", {}), media_type)
        if "json" not in media_type:  # a binary encoding or text, said by its media type
            return schema.get("type") == "string"
        return False  # an untyped object or dict, or no schema

    untyped, operations = [], 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            operations += 1
            successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
            assert successes, f"{method} {path}"
            for status, response in successes.items():
                content = response.get("content") or {"(none)": {}}
                for media_type, body in content.items():
                    if not typed(body.get("schema", {}), media_type):
                        untyped.append(f"{method.upper()} {path} {status} {media_type}: {body}")
    assert operations >= 14 and untyped == []
    model = document["paths"]["/api/global-model"]["get"]["responses"]["200"]["content"]
    assert set(model) == {"application/json", "application/octet-stream"}
    assert model["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}

    for path in LISTS:
        operation = document["paths"][path]["get"]
        names = {parameter["name"] for parameter in operation["parameters"] if parameter["in"] == "query"}
        assert {"limit", "after"} <= names and "offset" not in names, path
        page = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
        fields = set(page["properties"])
        assert PAGE_FIELDS <= fields <= PAGE_FIELDS | {"anomalies_as_of", "device_id"}, path
        assert not OLD_PAGE_FIELDS & fields, path
        items = page["properties"]["items"]
        assert items["type"] == "array" and "$ref" in items["items"], path
    for name, schema in components.items():
        assert not STORAGE_FIELDS & set(schema.get("properties", {})), name
