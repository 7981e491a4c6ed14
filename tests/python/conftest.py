"""Fixtures for the Python client tests. The Rust test harness starts a toolhost server and
passes where it is: TOOLHOST_URL (http://127.0.0.1:PORT), TOOLHOST_TOKEN (the bearer token),
TOOLHOST_BIN (the binary, for stdio) and TOOLHOST_CACHE (its runtime cache)."""

import os

import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def url():
    return os.environ["TOOLHOST_URL"]


@pytest.fixture
def token():
    return os.environ["TOOLHOST_TOKEN"]


@pytest.fixture
def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def toolhost_bin():
    return os.environ["TOOLHOST_BIN"]


@pytest.fixture
def stdio_env():
    """The environment `toolhost stdio` needs: its cache, and logs kept quiet on stderr."""
    return {"TOOLHOST_CACHE": os.environ["TOOLHOST_CACHE"], "TOOLHOST_LOG": "warn"}
