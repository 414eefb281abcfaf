"""The real `ollama` CLI (Ollama's own Go client) against the server under test.

Its requests differ from the Python client's in ways that matter to a router: `ollama show`
and `ollama rm` send an empty `model` beside the deprecated `name`, `ollama run` calls
`/api/show` before it generates, `ollama stop` unloads with `keep_alive: "0s"`. Against the
router, scripts/conformance runs it on a fleet where each model lives on one node only, so a
request sent to the wrong node fails every time rather than by chance.

Needs OLLAMA_CLI (the `ollama` binary scripts/ensure-ollama builds); skipped without it, unless
OLLAMA_MESH_REQUIRE_REAL_OLLAMA=1, when its absence fails the suite.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from checks import full_name

CLI_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cli(base_url: str):
    binary = os.environ.get("OLLAMA_CLI", "").strip()
    if not binary:
        if os.environ.get("OLLAMA_MESH_REQUIRE_REAL_OLLAMA") == "1":
            pytest.fail("OLLAMA_CLI is not set, and the real ollama CLI is required")
        pytest.skip("OLLAMA_CLI is not set (the ollama binary to drive)")

    def run(*args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, OLLAMA_HOST=base_url, NO_COLOR="1", TERM="dumb")
        done = subprocess.run(
            [binary, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert done.returncode == 0, f"ollama {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return done

    return run


def test_show(cli, model: str):
    out = cli("show", model).stdout
    assert "architecture" in out and "Capabilities" in out, out


@pytest.mark.parametrize("attempt", range(3))
def test_run_generates(cli, model: str, attempt: int):
    # The tiny test model has random weights and may stop at once: an empty answer is fine, an
    # error (a model "not found", a refused pull) is not; `cli` already asserts exit 0.
    done = cli("run", model, "hello")
    assert "Error" not in done.stderr, done.stderr


def test_list_and_ps(cli, model: str):
    cli("run", model, "hi")
    assert full_name(model) in cli("list").stdout
    assert full_name(model) in cli("ps").stdout


def test_stop_unloads(cli, model: str):
    cli("run", model, "hi")
    cli("stop", model)


def test_copy_then_remove(cli, model: str):
    copy = f"cli-copy-{uuid.uuid4().hex[:8]}"
    cli("cp", model, copy)
    try:
        assert full_name(copy) in cli("list").stdout
        assert "architecture" in cli("show", copy).stdout
    finally:
        cli("rm", copy)
    assert full_name(copy) not in cli("list").stdout
