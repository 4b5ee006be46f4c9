"""schemathesis against the OpenAPI document the running service serves: generated requests
(valid and invalid) never get a 500, and every answer matches the document."""

from __future__ import annotations

import re
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from web_helpers import Fleet, Logins

from web.openapi import document

# The document the service serves is this one (test_served_document_is_the_module_one), so
# generating from it at import time tests the served contract without a server at import.
schema = schemathesis.openapi.from_dict(document()).exclude(
    path="/live"  # an endless event stream: covered by test_web_live
)


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case: Any, served: str, logins: Logins, fleet: Fleet) -> None:
    excluded = []
    if (case.operation.path in _CROSS_FIELD
            or (case.method.upper(), case.operation.path) in _FUTURE_ONLY):
        # "from must not be after to" (with to defaulting to now) cannot be said in OpenAPI
        # 3.0, so a future `from` alone is schema-valid yet rightly refused; likewise a
        # `hold_until` that has already passed.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(base_url=f"{served}/api/v1", headers=logins.auth("admin"),
                           checks=ALL_CHECKS, excluded_checks=excluded)


# Every check that judges one request and its answer (the stateful ones, use_after_free and
# ensure_resource_availability, need a recorded scenario of several calls).
ALL_CHECKS = [
    schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection, schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.missing_required_header, schemathesis.checks.unsupported_method,
    schemathesis.checks.ignored_auth, schemathesis.checks.allow_header_conformance,
    schemathesis.checks.max_response_time,
]


_CROSS_FIELD = {"/meters/{meter}/history", "/meters/{meter}/intervals", "/anomalies"}
_FUTURE_ONLY = {("POST", "/commands")}  # hold_until must be in the future


def test_every_route_is_documented(served: str) -> None:
    """A route added without a description would escape the checks above."""
    from web import create_app

    doc = requests.get(f"{served}/api/v1/openapi.json", timeout=10).json()
    assert doc == document()
    app = create_app("postgresql://unused")
    served_routes = {
        (r.method.lower(), re.sub(r"^/api/v1", "", r.resource.canonical))
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/api/v1")
        and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served_routes - documented == set()
    assert documented - served_routes == set()
