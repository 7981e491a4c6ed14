"""The MCP conformance suite (npm @modelcontextprotocol/conformance, pinned in conformance/,
run on the Node 22 it pins too) against `toolhost serve` with its defaults: every server
scenario that needs no fixture of the suite's own, and those whose fixtures toolhost can
offer as org tools (tests/python/fixtures/conformance-tools)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import default_server, npm_install

HERE = Path(__file__).resolve().parent
# Every server scenario that needs no fixture.
SCENARIOS = [
    "server-initialize",
    "ping",
    "logging-set-level",
    "completion-complete",
    "tools-list",
    "resources-list",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
]
# Those whose fixtures are org tools (a tool the suite names, in fixtures/conformance-tools).
WITH_FIXTURE_TOOLS = ["tools-call-simple-text", "tools-call-error", "json-schema-2020-12"]
FIXTURE_TOOLS = HERE / "fixtures" / "conformance-tools"


@pytest.fixture(scope="module")
def suite():
    return npm_install(HERE / "conformance", "conformance-suite", scripts=True) / "node_modules" / ".bin"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with default_server(tmp_path_factory.mktemp("conformance")) as (url, _log):
        yield url


@pytest.fixture(scope="module")
def fixture_server(tmp_path_factory):
    with default_server(tmp_path_factory.mktemp("conformance-fixtures"), "--tools-dir", str(FIXTURE_TOOLS)) as (url, _):
        yield url


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance_scenario(scenario, suite, server, tmp_path):
    run_scenario(scenario, suite, server, tmp_path)


@pytest.mark.parametrize("scenario", WITH_FIXTURE_TOOLS)
def test_conformance_scenario_with_fixture_tools(scenario, suite, fixture_server, tmp_path):
    run_scenario(scenario, suite, fixture_server, tmp_path)


def run_scenario(scenario, suite, server, tmp_path):
    env = {**os.environ, "PATH": f"{suite}{os.pathsep}{os.environ['PATH']}"}
    node = subprocess.run(["node", "--version"], env=env, capture_output=True, text=True)
    assert node.stdout.startswith("v22."), f"the pinned Node 22 is not first on PATH: {node.stdout}{node.stderr}"
    done = subprocess.run(
        ["conformance", "server", "--url", f"{server}/mcp", "--scenario", scenario, "-o", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    checks = [
        check
        for path in tmp_path.rglob("checks.json")
        for check in json.loads(path.read_text())
    ]
    failed = [c for c in checks if c.get("status") not in ("SUCCESS", "INFO")]
    assert done.returncode == 0 and checks and not failed, f"{done.stdout}\n{done.stderr}\n{json.dumps(failed, indent=1)}"
