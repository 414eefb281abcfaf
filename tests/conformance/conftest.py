"""Fixtures for the client conformance suite.

Point it at any Ollama-compatible server:
    OLLAMA_URL=http://127.0.0.1:11434  [OLLAMA_TEST_MODEL=tiny]  [OLLAMA_TEST_EMBED_MODEL=...]
The differential test also needs OLLAMA_REFERENCE_URL (a real Ollama) and compares the two.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from wire import GEN_OPTIONS, TIMEOUT  # noqa: E402  (after the sys.path line)


def _url(var: str) -> str | None:
    value = os.environ.get(var, "").strip().rstrip("/")
    return value or None


@pytest.fixture(scope="session")
def base_url() -> str:
    url = _url("OLLAMA_URL")
    if url is None:
        pytest.skip("OLLAMA_URL is not set (e.g. OLLAMA_URL=http://127.0.0.1:11434)")
    return url


@pytest.fixture(scope="session")
def model() -> str:
    return os.environ.get("OLLAMA_TEST_MODEL", "tiny")


@pytest.fixture(scope="session")
def embed_model(model: str) -> str:
    return os.environ.get("OLLAMA_TEST_EMBED_MODEL", model)


@pytest.fixture(scope="session")
def gen_options() -> dict:
    return dict(GEN_OPTIONS)


@pytest.fixture(scope="session")
def missing_model() -> str:
    """A model name no server has."""
    return "no-such-model-conformance:latest"


@pytest.fixture(scope="session")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=TIMEOUT)


@pytest.fixture(scope="session")
def oai(base_url: str) -> openai.OpenAI:
    # Ollama ignores the key, but the client insists on one.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="ollama", timeout=60.0, max_retries=0)


@pytest.fixture(scope="session")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def loaded(client: ollama.Client, model: str) -> str:
    """Make sure the test model is loaded (a preload request), and return its name."""
    client.generate(model=model, prompt="", keep_alive="5m")
    return model
