"""Fixtures for the Python client tests. The Rust test harness starts a toolhost server and
passes where it is: TOOLHOST_URL (http://127.0.0.1:PORT), TOOLHOST_TOKEN (the bearer token),
TOOLHOST_BIN (the binary, for stdio) and TOOLHOST_CACHE (its runtime cache)."""

import contextlib
import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


# A workspace handle: `ws_` and 32 lowercase base32 characters.
HANDLE = re.compile(r"ws_[a-z2-7]{32}")
# The last line of the text of every tool that works in a workspace.
HANDLE_LINE = re.compile(rf"workspace: ({HANDLE.pattern})")


def split_handle(text, named=None):
    """(body, handle) of the text of a tool that works in a workspace, whose last line must be
    `workspace: <handle>`. The body is the text before that line, line break included (the server
    adds one when the tool's text had none), so code that printed 42 has the body `42\\n`. `named`
    is what the line says instead of a handle for a workspace that has none: `toolhost stdio
    --workspace DIR` names its folder by its path."""
    rest, newline, last = text.rpartition("\n")
    name = last.removeprefix("workspace: ")
    fits = name == named if named else HANDLE.fullmatch(name)
    assert last.startswith("workspace: ") and fits, f"the last line should name the workspace:\n{text}"
    return rest + newline, name


def body(text):
    """What a tool that works in a workspace said: its text without the last line, which must
    name the workspace (see split_handle)."""
    return split_handle(text)[0]


def handle(result, named=None):
    """The handle of the workspace a successful call worked in: the last line of its text,
    `workspace: <handle>`, which must be what its structured content's `workspace` says. Takes the
    SDK's CallToolResult or a result as JSON (what the Inspector CLI prints); `named` as in
    split_handle."""
    if isinstance(result, dict):
        error, text = result.get("isError", False), result["content"][0]["text"]
        structured = result["structuredContent"]
    else:
        error, text, structured = result.is_error, result.content[0].text, result.structured_content
    assert not error, text
    name = split_handle(text, named)[1]
    assert structured["workspace"] == name, (structured, text)
    return name


def text_block(output):
    """What printing a list of one text block (a Mistral MCP client's result) shows: `output`,
    as repr writes it, then the handle line."""
    return re.compile(re.escape(f"[{{'type': 'text', 'text': '{output}") + HANDLE_LINE.pattern + re.escape("'}]"))


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


def npm_install(folder, name, scripts):
    """The packages of `folder`'s package.json, installed with `npm ci` from its lock file into
    a folder beside the test venv, once per lock file; returns that folder. `scripts` lets
    install scripts run (the `node` package fetches its binary in one)."""
    npm = shutil.which("npm")
    assert npm, "npm is not installed: the Node clients and the conformance suite need Node.js and npm"
    manifest, lock = (folder / "package.json").read_bytes(), (folder / "package-lock.json").read_bytes()
    stamp = hashlib.sha256(manifest + lock).hexdigest()
    dest = Path(sys.prefix).parent / name
    if not (dest / "stamp").exists() or (dest / "stamp").read_text() != stamp:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copy(folder / "package.json", dest)
        shutil.copy(folder / "package-lock.json", dest)
        command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        if not scripts:
            command.append("--ignore-scripts")
        done = subprocess.run(command, cwd=dest, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
        (dest / "stamp").write_text(stamp)
    return dest


ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerLog:
    """The lines a server writes to stderr, read as they come."""

    def __init__(self, stream):
        self.lines = []
        self._new = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, text, timeout):
        """Waits until a line containing `text` is written; fails if the server stops first."""
        deadline = time.monotonic() + timeout
        if any(text in line for line in self.lines):
            return
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line with {text!r} within {timeout} s:\n" + "\n".join(self.lines))
            assert line is not None, "the server stopped:\n" + "\n".join(self.lines)
            if text in line:
                return


@contextlib.contextmanager
def default_server(tmp_path, *args, port=None):
    """`toolhost serve` as the README starts it, from the repository root with its defaults
    (loopback, no token, ./tools, info logs), but on a free port (or `port`) and with a temp
    workspaces folder. Yields (url, log) once it is ready."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLHOST_")}
    env.update(TOOLHOST_CACHE=os.environ["TOOLHOST_CACHE"], TOOLHOST_WORKSPACES=str(tmp_path / "ws"))
    server = subprocess.Popen(
        [os.environ["TOOLHOST_BIN"], "serve", "--listen", f"127.0.0.1:{port}", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        log = ServerLog(server.stderr)
        log.pid = server.pid
        log.wait_for("ready: the python runtime is loaded", 120)
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.terminate()
        server.wait(timeout=30)
