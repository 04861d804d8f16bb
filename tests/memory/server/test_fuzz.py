"""Property-based fuzzing of every documented route with schemathesis (valid and invalid
bodies from the app's own OpenAPI schema), operation by operation in process, and in stateful
sequences (links schemathesis infers from a created project to every route that takes its org
and project) through the schemathesis CLI against ``channelmind serve``. Never a 5xx, never a
traceback, 2xx answers conform to the declared response schemas, and a body valid by the
schema is accepted: the schema states the id, content and time rules the server enforces
(issue 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
)

from memory.server.app import create_app
from tests.schemathesis_hooks import no_traceback
from tests.server_harness import ROOT, channelmind_serve
from tests.server_harness import settings as server_settings

MAX_EXAMPLES = 12
STATEFUL_EXAMPLES = 60

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


CHECKS = [not_a_server_error, response_schema_conformance, positive_data_acceptance, no_traceback]
REQUEST_TIMEOUT_S = 120


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_or_tracebacks(case: schemathesis.Case) -> None:
    # Not schemathesis' 10 s: an index rebuild scrubs Chroma's files, which on a loaded
    # 2-core machine took longer; this test is about errors, not speed.
    response = case.call(timeout=REQUEST_TIMEOUT_S)
    case.validate_response(response, checks=CHECKS)


def test_stateful_workflows_through_the_schemathesis_cli(tmp_path: Path) -> None:
    """Schemathesis' stateful phase, as CI runs it: ``schemathesis run`` against
    ``channelmind serve``, following the links it infers (a created project's org and project
    into every route that takes them), with the same checks and no traceback in any answer."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log, channelmind_serve(tmp_path / "data", log) as (_, url):
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{url}/openapi.json",
                "--phases",
                "stateful",
                "--max-examples",
                str(STATEFUL_EXAMPLES),
                "--request-timeout",
                str(REQUEST_TIMEOUT_S),
                "--seed",
                "20260901",
                "--checks",
                "not_a_server_error,response_schema_conformance,positive_data_acceptance,"
                "no_traceback",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    log_text = log_path.read_text()
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Stateful" in run.stdout and " passed" in run.stdout, run.stdout[-3000:]
    assert "Traceback" not in log_text, log_text[-6000:]
