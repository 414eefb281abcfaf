"""The router in the Consul Connect service mesh, seen by an official client.

Runs only when MESH_CONSUL_URL names the Consul agent of a mesh fleet (scripts/conformance sets
it for the mesh leg): intentions written while the router runs must stop its requests, pooled
connections included, and allowing it again must restore them.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import ollama
import pytest

ROUTER_SERVICE = "ollama-mesh-router"
NODE_SERVICE = "ollama"
# The requirement is one second; the bound leaves room for a loaded CI machine.
DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def consul_url() -> str:
    url = os.environ.get("MESH_CONSUL_URL", "").rstrip("/")
    if not url:
        pytest.skip("MESH_CONSUL_URL is not set: not a mesh fleet")
    return url


def set_intention(consul_url: str, action: str) -> None:
    entry = {
        "Kind": "service-intentions",
        "Name": NODE_SERVICE,
        "Sources": [{"Name": ROUTER_SERVICE, "Action": action}],
    }
    request = urllib.request.Request(
        f"{consul_url}/v1/config", data=json.dumps(entry).encode(), method="PUT"
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def generates(client: ollama.Client, model: str) -> bool:
    try:
        client.generate(model=model, prompt="hi", options={"num_predict": 2})
        return True
    except (ollama.ResponseError, ConnectionError):
        return False


def wait_until(predicate, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < DEADLINE_S, f"{what} after {DEADLINE_S} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_intentions_decide_whether_the_router_reaches_the_nodes(base_url, model, consul_url):
    client = ollama.Client(host=base_url)
    try:
        # Requests pass, and leave pooled connections to the nodes behind.
        assert generates(client, model)
        assert generates(client, model)

        set_intention(consul_url, "deny")
        took = wait_until(lambda: not generates(client, model), "still served")
        print(f"denied: requests stopped {took:.2f} s after the intention was written")
        with pytest.raises(ollama.ResponseError) as denied:
            client.generate(model=model, prompt="hi")
        assert denied.value.status_code in (502, 503)

        set_intention(consul_url, "allow")
        took = wait_until(lambda: generates(client, model), "still refused")
        print(f"allowed: requests resumed {took:.2f} s after the intention was written")
    finally:
        set_intention(consul_url, "allow")
