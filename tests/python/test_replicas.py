"""Three toolhost replicas behind a real HAProxy running deploy/haproxy/haproxy.cfg, all sharing
one workspaces folder, as a deployment with N replicas on one ReadWriteMany volume runs them.

- Session-less clients (MCP 2026-07-28, the official SDK's default `mcp.Client`) are balanced
  round-robin: a file written through one replica is read back through the others by passing
  its workspace handle.
- Older-era sessions stay on the replica that holds them: `mcp.Client(mode="legacy")` on /mcp
  (HAProxy learns its Mcp-Session-Id), the Mistral SDK on /mcp and on legacy /sse + /messages
  (sticky by client address); each continues a shared workspace by handle.
- A replica stops and comes back mid-run: HAProxy's /readyz checks take it out and put it back,
  calls go on, and every file written before, during and after is there on every replica.
- Concurrent read-modify-write calls on one workspace from different replicas lose no update:
  the workspace lock (an flock on the shared folder) serializes them across processes.
- Another principal's token cannot use a handle on any replica.

HAProxy comes from the system's packages: when it is not installed, this installs it with
apt-get (it never skips). The servers run $TOOLHOST_BIN with $TOOLHOST_CACHE; every process
this starts is stopped by its PID when the module's tests are done."""

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from conftest import ROOT, ServerLog, free_port
from conftest import handle as handle_of
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = 3
ALICE, BOB = "alice-token", "bob-token"
SESSIONLESS = "2026-07-28"
SHARED = ("notes/shared.txt", "written once, read through every replica\n")


# --- processes -----------------------------------------------------------------------------


def stop(process, grace=40):
    """SIGTERM, wait, SIGKILL if it does not stop in `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def haproxy_binary():
    """The haproxy on PATH (or in /usr/sbin), installed with apt-get when there is none."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    apt = shutil.which("apt-get")
    assert apt, "haproxy is not installed and there is no apt-get to install it: install HAProxy 2.6 or newer"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", "haproxy"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        # Often a stale or missing package list: refresh it and try once more.
        update = subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"cannot install haproxy with apt-get (this test needs a real HAProxy):\n"
            f"apt-get update: {update.stdout[-2000:]}{update.stderr[-2000:]}\n"
            f"apt-get install: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert found, f"apt-get installed haproxy but there is no haproxy binary:\n{done.stdout[-2000:]}"
    return found


class Replica:
    """One `toolhost serve` on its own port, with the shared workspaces folder and tokens. Its
    logs are JSON lines; `logs` keeps those of every run (it may be stopped and started)."""

    def __init__(self, name, workspaces, home):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workspaces = workspaces
        self.home = home
        self.process = None
        self.logs = []

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLHOST_")}
        env.update(TOOLHOST_CACHE=os.environ["TOOLHOST_CACHE"], TOOLHOST_LOG="info", TOOLHOST_LOG_FORMAT="json")
        self.home.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [
                os.environ["TOOLHOST_BIN"], "serve",
                "--listen", f"127.0.0.1:{self.port}",
                "--workspaces-dir", str(self.workspaces),
                "--token", ALICE, "--token", BOB,
                "--tools-dir", str(self.home / "tools"),
            ],
            cwd=self.home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        self.logs.append(ServerLog(self.process.stderr))

    def wait_ready(self):
        self.logs[-1].wait_for("ready: the python runtime is loaded", 120)

    def stop(self):
        if self.process is not None:
            stop(self.process)

    def tool_calls(self, tool=None):
        """The `tool call` log lines of every run of this replica, as (tool, status)."""
        calls = []
        for log in self.logs:
            for line in list(log.lines):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("fields", {}).get("message") == "tool call":
                    name = entry.get("span", {}).get("tool")
                    if tool in (None, name):
                        calls.append((name, entry["fields"].get("status")))
        return calls


def lb_config(template, port, servers, admin_socket):
    """The shipped haproxy.cfg with its `bind` on 127.0.0.1:`port`, its `server` lines replaced
    by `servers` (name, port), and an admin socket. Everything else is used as shipped."""
    lines, binds, replaced = [], 0, False
    for line in template.splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            lines.append(f"    bind 127.0.0.1:{port}")
            binds += 1
        elif words[:1] == ["server"]:
            if not replaced:
                lines.extend(f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers)
                replaced = True
        else:
            lines.append(line)
    assert binds == 1 and replaced, "haproxy.cfg has one `bind` line and `server` lines for the replicas"
    lines += ["", "global", f"    stats socket {admin_socket} mode 600 level admin", ""]
    return "\n".join(lines)


class Cluster:
    """The replicas and HAProxy in front of them, at `url`."""

    def __init__(self, tmp):
        workspaces = tmp / "workspaces"
        self.replicas = [Replica(f"toolhost-{i + 1}", workspaces, tmp / f"replica-{i + 1}") for i in range(REPLICAS)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = tmp / "haproxy.sock"
        self.config = tmp / "haproxy.cfg"
        self.haproxy = None
        self.log = None

    def start(self):
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_ready()
        servers = [(r.name, r.port) for r in self.replicas]
        self.config.write_text(lb_config(HAPROXY_CFG.read_text(), self.port, servers, self.socket))
        # -db: in the foreground, not a daemon; its log (stdout, per haproxy.cfg) and alerts
        # (stderr) are read like a server's.
        self.haproxy = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.log = ServerLog(self.haproxy.stdout)
        for replica in self.replicas:
            self.wait_for_state(replica, "UP", 30)

    def stop(self):
        if self.haproxy is not None:
            stop(self.haproxy, grace=10)
        for replica in self.replicas:
            replica.stop()

    def admin(self, command):
        """One command on HAProxy's admin socket; its answer."""
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.socket))
                    s.sendall(command.encode() + b"\n")
                    chunks = []
                    while chunk := s.recv(65536):
                        chunks.append(chunk)
                return b"".join(chunks).decode()
            except OSError:
                assert self.haproxy.poll() is None, "haproxy stopped:\n" + "\n".join(self.log.lines)
                assert time.monotonic() < deadline, f"haproxy's admin socket does not answer {command!r}"
                time.sleep(0.2)

    def states(self):
        """The health of each replica in HAProxy's `toolhost` backend: UP, DOWN, `UP 1/2`, ..."""
        rows = csv.DictReader(io.StringIO(self.admin("show stat").lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "toolhost"}

    def wait_for_state(self, replica, state, timeout):
        deadline = time.monotonic() + timeout
        while (now := self.states().get(replica.name)) != state:
            assert time.monotonic() < deadline, f"HAProxy sees {replica.name} as {now!r}, not {state} after {timeout} s"
            time.sleep(0.2)

    def sessions(self):
        """HAProxy's Mcp-Session-Id stick table: session id -> server id (1 = toolhost-1, ...)."""
        table = {}
        for line in self.admin("show table toolhost").splitlines():
            key = re.search(r"\bkey=(\S+)", line)
            server = re.search(r"\bserver_id=(\d+)", line)
            if key and server:
                table[key.group(1)] = int(server.group(1))
        return table

    def calls(self, tool=None):
        """How many tool calls each replica has logged so far."""
        return {r.name: len(r.tool_calls(tool)) for r in self.replicas}


def served(before, after):
    """The replicas that logged calls between two `Cluster.calls()` counts, with how many."""
    return {name: after[name] - before[name] for name in after if after[name] > before[name]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("replicas"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- clients -------------------------------------------------------------------------------


@asynccontextmanager
async def client(url, token=ALICE, mode="auto", seen_sessions=None, statuses=None):
    """The official SDK's `mcp.Client` on `url`/mcp with a bearer token. `seen_sessions`
    collects the Mcp-Session-Id headers of the responses, `statuses` their HTTP statuses."""

    async def on_response(response):
        if seen_sessions is not None and "mcp-session-id" in response.headers:
            seen_sessions.add(response.headers["mcp-session-id"])
        if statuses is not None:
            statuses.append(response.status_code)

    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30.0, read=120.0),
        event_hooks={"response": [on_response]},
    ) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as c:
            yield c


def text_of(result):
    return "".join(block.text for block in result.content if block.type == "text")


def assert_ok(result, handle=None):
    """A tool result that is not an error and names its workspace (in structuredContent and as
    the text's last line, conftest.handle); returns the handle, which must be `handle` if given."""
    used = handle_of(result)
    if handle is not None:
        assert used == handle, f"the call used {used}, not the workspace it was given ({handle})"
    return used


def leaves(error):
    """The exceptions inside an exception group (the SDK wraps failures in task groups' ones)."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def sessionless_call(url, tool, arguments, attempts=1):
    """One tool call from a fresh session-less client; returns (result, failed attempts). With
    `attempts` > 1, a call that did not reach a replica is tried again, a bounded number of
    times: a connection error, or HAProxy's 502/503/504 (which the SDK reports as an MCPError).
    Anything else, a toolhost 500 included, fails at once."""
    failures = []
    for _ in range(attempts):
        statuses = []
        try:
            async with client(url, statuses=statuses) as c:
                version = c.protocol_version
                result = await c.call_tool(tool, arguments)
            assert version == SESSIONLESS, version
            return result, failures
        except Exception as error:
            gateway = any(status in (502, 503, 504) for status in statuses)
            retry = all(
                isinstance(leaf, httpx2.TransportError) or (gateway and isinstance(leaf, MCPError))
                for leaf in leaves(error)
            )
            if attempts == 1 or not retry:
                raise
            failures.append(f"{statuses}: {leaves(error)!r}")
        await anyio.sleep(0.5)
    raise AssertionError(f"{tool} failed {attempts} times through the load balancer: {failures}")


@pytest.fixture(scope="module")
def shared_file(cluster):
    """A file alice writes session-less through the load balancer: (handle, result, version)."""

    async def write():
        async with client(cluster.url) as c:
            result = await c.call_tool("write_file", {"path": SHARED[0], "content": SHARED[1]})
            return assert_ok(result), result, c.protocol_version

    return anyio.run(write)


# --- the tests -----------------------------------------------------------------------------


def test_the_shipped_config_is_valid_haproxy():
    """deploy/haproxy/haproxy.cfg as shipped (host names that need not resolve yet)."""
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"haproxy -c refuses haproxy.cfg:\n{checked.stdout}{checked.stderr}"


async def test_sessionless_calls_are_balanced_and_share_workspaces(cluster, shared_file):
    handle, wrote, version = shared_file
    assert version == SESSIONLESS, f"mcp.Client negotiated {version} through HAProxy"
    assert wrote.structured_content["path"] == SHARED[0]
    assert wrote.structured_content["size"] == len(SHARED[1])

    # Without `workspace` and without a session, each call starts a workspace of its own.
    first, _ = await sessionless_call(cluster.url, "write_file", {"path": "a.txt", "content": "a"})
    second, _ = await sessionless_call(cluster.url, "write_file", {"path": "a.txt", "content": "a"})
    assert len({assert_ok(first), assert_ok(second), handle}) == 3

    before = cluster.calls()
    async with client(cluster.url) as c:
        assert c.protocol_version == SESSIONLESS
        for _ in range(REPLICAS):
            read = await c.call_tool("read_file", {"path": SHARED[0], "workspace": handle})
            assert_ok(read, handle)
            assert read.structured_content["content"] == SHARED[1]
            ran = await c.call_tool(
                "code_interpreter", {"code": f"print(open({SHARED[0]!r}).read(), end='')", "workspace": handle}
            )
            assert_ok(ran, handle)
            assert ran.structured_content["stdout"] == SHARED[1]
            listed = await c.call_tool("list_files", {"path": "notes", "workspace": handle})
            assert_ok(listed, handle)
            assert [e["name"] for e in listed.structured_content["entries"]] == ["shared.txt"]
    # Round-robin, request by request: the nine calls went to every replica.
    spread = served(before, cluster.calls())
    assert sum(spread.values()) == 3 * REPLICAS, spread
    assert len(spread) == REPLICAS, f"the session-less calls were not balanced across the replicas: {spread}"


async def test_python_state_follows_its_handle_across_replicas_one_call_at_a_time(cluster):
    """Variables kept in a workspace are restored by whichever replica serves the next call; calls
    on one workspace sent at once run one after another, each from the state the last one saved."""
    count = "n = globals().get('n', 0) + 1\nprint(n)"
    first, _ = await sessionless_call(cluster.url, "code_interpreter", {"code": count})
    handle = assert_ok(first)
    assert first.structured_content["state"]["saved"] is True
    before = cluster.calls("code_interpreter")
    async with client(cluster.url) as c:
        for expected in range(2, 2 + 2 * REPLICAS):
            ran = await c.call_tool("code_interpreter", {"code": count, "workspace": handle})
            assert_ok(ran, handle)
            assert ran.structured_content["stdout"] == f"{expected}\n", text_of(ran)
            assert ran.structured_content["state"]["restored"] is True
    spread = served(before, cluster.calls("code_interpreter"))
    assert len(spread) == REPLICAS, f"the calls did not reach every replica: {spread}"

    # Six at once, from six clients: none is lost, none sees another's half-made state.
    async def one():
        result, _ = await sessionless_call(cluster.url, "code_interpreter", {"code": count, "workspace": handle}, 5)
        assert_ok(result, handle)
        return int(result.structured_content["stdout"])

    results = []

    async def record():
        results.append(await one())

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(record)
    last = 1 + 2 * REPLICAS
    assert sorted(results) == list(range(last + 1, last + 7)), results


async def test_older_sessions_stick_to_their_replica_and_continue_a_workspace_by_handle(cluster, shared_file):
    from mistralai.extra.mcp.sse import MCPClientSSE, SSEServerParams
    from mistralai.extra.mcp.streamable_http import MCPClientStreamableHTTP, StreamableHTTPServerParams

    handle = shared_file[0]

    # mcp.Client with the initialize handshake: a session on /mcp, routed by its Mcp-Session-Id.
    ids = set()
    before = cluster.calls()
    async with client(cluster.url, mode="legacy", seen_sessions=ids) as c:
        assert c.protocol_version != SESSIONLESS, c.protocol_version
        own = await c.call_tool("write_file", {"path": "mine.txt", "content": "session default"})
        default = assert_ok(own)
        assert default != handle, "a session starts with a workspace of its own"
        again = await c.call_tool("read_file", {"path": "mine.txt"})
        assert assert_ok(again) == default, "calls without `workspace` stay in the session's workspace"
        shared = await c.call_tool("read_file", {"path": SHARED[0], "workspace": handle})
        assert_ok(shared, handle)
        assert shared.structured_content["content"] == SHARED[1]
        added = await c.call_tool(
            "code_interpreter", {"code": "open('from-legacy.txt', 'w').write('legacy')", "workspace": handle}
        )
        assert_ok(added, handle)
        for _ in range(REPLICAS):
            assert_ok(await c.call_tool("list_files", {"workspace": handle}), handle)
        assert len(ids) == 1, f"one session, one Mcp-Session-Id: {ids}"
        (session_id,) = ids
        table = cluster.sessions()
        assert session_id in table, f"HAProxy did not learn the session id {session_id}: {table}"
    spread = served(before, cluster.calls())
    assert len(spread) == 1, f"the calls of one session reached several replicas: {spread}"
    holder = next(iter(spread))
    assert cluster.replicas[table[session_id] - 1].name == holder, (table, spread)
    # The session's own workspace outlives it and is on every replica, by its handle.
    for replica in cluster.replicas:
        mine, _ = await sessionless_call(replica.url, "read_file", {"path": "mine.txt", "workspace": default})
        assert_ok(mine, default)
        assert mine.structured_content["content"] == "session default"

    # The Mistral SDK: legacy SSE (/sse, then /messages?sessionId=...) and streamable HTTP.
    auth = {"Authorization": f"Bearer {ALICE}"}
    for mistral in (
        MCPClientSSE(sse_params=SSEServerParams(url=f"{cluster.url}/sse", headers=auth, timeout=100)),
        MCPClientStreamableHTTP(params=StreamableHTTPServerParams(url=f"{cluster.url}/mcp", headers=auth)),
    ):
        before = cluster.calls()
        await mistral.initialize()
        try:
            for _ in range(REPLICAS):
                chunks = await mistral.execute_tool(
                    "code_interpreter",
                    {"code": f"print(open({SHARED[0]!r}).read() + open('from-legacy.txt').read())", "workspace": handle},
                )
                assert chunks == [{"type": "text", "text": f"{SHARED[1]}legacy\nworkspace: {handle}"}], chunks
        finally:
            await mistral.aclose()
        spread = served(before, cluster.calls())
        assert sum(spread.values()) == REPLICAS and len(spread) == 1, (
            f"{type(mistral).__name__}: the calls of one session reached several replicas: {spread}"
        )
    # The legacy stream and its posts were kept together by the client's address.
    legacy = cluster.admin("show table toolhost_legacy_sse")
    assert re.search(r"\bkey=(::ffff:)?127\.0\.0\.1\b", legacy), legacy


async def test_a_replica_restarts_mid_run_and_no_file_is_lost(cluster):
    victim = cluster.replicas[1]
    made, _ = await sessionless_call(cluster.url, "write_file", {"path": "before.txt", "content": "before"})
    handle = assert_ok(made)
    expected = {"before.txt": "before"}
    failed = []

    async def write(name, content):
        result, failures = await sessionless_call(
            cluster.url, "write_file", {"path": name, "content": content, "workspace": handle}, attempts=10
        )
        assert_ok(result, handle)
        expected[name] = content
        failed.extend(failures)

    # The replica stops (SIGTERM: /readyz turns 503, running calls finish, the process exits)
    # while calls go on; HAProxy's checks take it out of the pool.
    victim.process.send_signal(signal.SIGTERM)
    for i in range(3):
        await write(f"during-stop-{i}.txt", f"while {victim.name} stops ({i})")
    victim.process.wait(timeout=40)
    cluster.wait_for_state(victim, "DOWN", 15)
    before_down = cluster.calls()
    for i in range(REPLICAS):
        await write(f"while-down-{i}.txt", f"while {victim.name} is down ({i})")
    down = served(before_down, cluster.calls())
    assert victim.name not in down and sum(down.values()) == REPLICAS, down

    # It comes back on the same port; HAProxy's checks put it back.
    victim.start()
    victim.wait_ready()
    cluster.wait_for_state(victim, "UP", 30)
    restarted = len(victim.tool_calls())
    # One client, until the replica takes a call: a client's requests go round the replicas in
    # turn, but the first call brings a tools/list (the SDK checks the result's schema), so
    # which replica gets which call shifts; 2 x REPLICAS calls surely reach each one.
    async with client(cluster.url) as c:
        for i in range(2 * REPLICAS):
            name, content = f"after-{i}.txt", f"after {victim.name} came back ({i})"
            assert_ok(await c.call_tool("write_file", {"path": name, "content": content, "workspace": handle}), handle)
            expected[name] = content
            if len(victim.tool_calls()) > restarted:
                break
    assert len(victim.tool_calls()) > restarted, f"{victim.name} took no call after it came back:\n" + "\n".join(
        cluster.log.lines[-20:]
    )
    print(f"calls retried while {victim.name} left the pool: {len(failed)} {failed}")

    # Every file, through every replica (directly) and through the load balancer.
    for url in [r.url for r in cluster.replicas] + [cluster.url]:
        listing, _ = await sessionless_call(url, "list_files", {"workspace": handle})
        assert_ok(listing, handle)
        assert sorted(e["name"] for e in listing.structured_content["entries"]) == sorted(expected), url
        for name, content in expected.items():
            read, _ = await sessionless_call(url, "read_file", {"path": name, "workspace": handle})
            assert_ok(read, handle)
            assert read.structured_content["content"] == content, (url, name)


async def test_concurrent_writers_on_different_replicas_lose_nothing(cluster):
    made, _ = await sessionless_call(cluster.url, "write_file", {"path": "log.txt", "content": ""})
    handle = assert_ok(made)
    writers = 12
    # Read the whole file, wait, write it all back with one line more: without a lock across
    # processes, two calls read the same text and one line is lost. Each line also says when
    # its call started and ended (the sandbox's clock is the host's).
    code = (
        "import time\n"
        "start = time.time()\n"
        "text = open('log.txt').read()\n"
        "time.sleep(0.2)\n"
        "open('log.txt', 'w').write(text + f'writer {number:02d} {{start:.6f}} {{time.time():.6f}}\\n')"
    )
    results, windows = {}, []
    before = cluster.calls("code_interpreter")

    async def append(number):
        async with client(cluster.url) as c:
            sent = time.time()
            results[number] = await c.call_tool("code_interpreter", {"code": code.format(number=number), "workspace": handle})
            windows.append((sent, time.time()))

    with anyio.fail_after(180):
        async with anyio.create_task_group() as tasks:
            for number in range(writers):
                tasks.start_soon(append, number)
    for number, result in sorted(results.items()):
        assert_ok(result, handle)
        assert result.structured_content["status"] == "ok", (number, result.structured_content)
    spread = served(before, cluster.calls("code_interpreter"))
    assert sum(spread.values()) == writers and len(spread) > 1, f"the writers did not run on several replicas: {spread}"
    # The race was there to lose: many calls were in flight at once.
    in_flight = max(sum(sent <= moment < done for sent, done in windows) for moment, _ in windows)
    assert in_flight >= REPLICAS, f"at most {in_flight} calls were in flight at once: {windows}"

    read, _ = await sessionless_call(cluster.url, "read_file", {"path": "log.txt", "workspace": handle})
    assert_ok(read, handle)
    lines = [line.split() for line in read.structured_content["content"].splitlines()]
    names = sorted(f"{word} {number}" for word, number, *_ in lines)
    assert names == [f"writer {i:02d}" for i in range(writers)], (
        f"{writers - len(set(names))} updates were lost (calls on {spread}):\n" + read.structured_content["content"]
    )
    # And the calls ran one after another, whichever replica ran them.
    runs = sorted((float(start), float(end)) for *_, start, end in lines)
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end, f"two writers ran at once: {runs}"


async def test_another_principal_cannot_use_a_handle_on_any_replica(cluster, shared_file):
    handle = shared_file[0]
    attempts = {
        "read_file": {"path": SHARED[0], "workspace": handle},
        "write_file": {"path": SHARED[0], "content": "bob was here", "workspace": handle},
        "delete_file": {"path": SHARED[0], "workspace": handle},
        "list_files": {"workspace": handle},
        "code_interpreter": {"code": f"print(open({SHARED[0]!r}).read())", "workspace": handle},
    }
    def refusals():
        return sum(status == "refused" for r in cluster.replicas for _, status in r.tool_calls())

    before, refused_before = cluster.calls(), refusals()
    # Each replica directly, then through the load balancer (round-robin over them all).
    for url in [r.url for r in cluster.replicas] + [cluster.url] * REPLICAS:
        async with client(url, token=BOB) as c:
            for tool, arguments in attempts.items():
                refused = await c.call_tool(tool, arguments)
                assert refused.is_error, (url, tool, text_of(refused))
                assert f"the workspace {handle} belongs to another user" in text_of(refused), (url, tool, text_of(refused))
    spread = served(before, cluster.calls())
    assert len(spread) == REPLICAS, spread
    assert refusals() - refused_before == 2 * REPLICAS * len(attempts), "each attempt is logged as refused"

    # alice's file is as she wrote it.
    read, _ = await sessionless_call(cluster.url, "read_file", {"path": SHARED[0], "workspace": handle})
    assert read.structured_content["content"] == SHARED[1]
