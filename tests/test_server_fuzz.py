"""Property-based fuzzing of every documented route with schemathesis (valid and invalid
bodies from the app's own OpenAPI schema): never a 5xx, never a traceback, and 2xx answers
conform to the declared response schemas."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from memory.server.app import create_app

from .server_harness import settings as server_settings

MAX_EXAMPLES = 12

# Loaded at import (schemathesis' from_fixture does not work with pytest 9): the schema comes
# from app.openapi() without starting anything; the engine opens in the app's lifespan, which
# schemathesis starts on its own event loop at the first call.
_DATA = Path(tempfile.mkdtemp(prefix="channelmind-fuzz-"))
_APP = create_app(settings=server_settings(data_dir=_DATA, allowed_hosts="testserver"))
# The coverage phase's negative cases are ~2000 near-identical 422s; the fuzzing phase still
# sends random invalid bodies, so the coverage phase keeps to valid boundary values.
_CONFIG = schemathesis.Config.from_dict(
    {"phases": {"coverage": {"generation": {"mode": "positive"}}}}
)
schema = schemathesis.openapi.from_dict(_APP.openapi(), config=_CONFIG)
schema.app = _APP


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()
    shutil.rmtree(_DATA, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_or_tracebacks(case: schemathesis.Case) -> None:
    response = case.call()
    assert "Traceback" not in response.text, response.text
    assert 'File "' not in response.text, response.text
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
