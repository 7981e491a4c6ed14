"""The official `mcp` Python SDK against toolhost on every transport: legacy HTTP+SSE
(`sse_client`), streamable HTTP (`streamable_http_client`) and stdio. Each session lists the
tools, runs code, writes, reads, lists and deletes files, all in the session's own workspace, reads
a resource and gets a prompt."""

import json
from contextlib import asynccontextmanager

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import body, handle

pytestmark = pytest.mark.anyio

TOOLS = {"calculate_sum", "code_interpreter", "delete_file", "list_files", "read_file", "write_file"}


@asynccontextmanager
async def session(transport, url, auth, toolhost_bin, stdio_env, stdio_args=(), **handlers):
    if transport == "sse":
        async with sse_client(f"{url}/sse", headers=auth) as (read, write):
            async with ClientSession(read, write, **handlers) as s:
                yield s
    elif transport == "streamable-http":
        async with httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
            async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write, **handlers) as s:
                    yield s
    else:
        params = StdioServerParameters(command=toolhost_bin, args=["stdio", *stdio_args], env=stdio_env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, **handlers) as s:
                yield s


@pytest.mark.parametrize("transport", ["sse", "streamable-http", "stdio"])
async def test_a_whole_session(transport, url, auth, toolhost_bin, stdio_env):
    async with session(transport, url, auth, toolhost_bin, stdio_env) as s:
        init = await s.initialize()
        assert init.server_info.name == "toolhost"
        assert init.protocol_version in ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")

        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert TOOLS <= set(tools)
        assert tools["code_interpreter"].output_schema["properties"]["status"]["enum"][0] == "ok"

        ran = await s.call_tool("code_interpreter", {"code": "import numpy as np\nnp.arange(5).sum()"})
        assert not ran.is_error
        assert body(ran.content[0].text) == "10\n"
        assert ran.structured_content["status"] == "ok"
        # Every file tool names the workspace it used: in a session, always the session's own.
        workspace = handle(ran)

        wrote = await s.call_tool("write_file", {"path": "notes/hello.txt", "content": "hello from python"})
        assert wrote.structured_content == {
            "path": "notes/hello.txt",
            "size": 17,
            "uri": "file:///workspace/notes/hello.txt",
            "workspace": workspace,
        }
        assert handle(wrote) == workspace
        read = await s.call_tool("code_interpreter", {"code": "print(open('notes/hello.txt').read().upper())"})
        assert body(read.content[0].text) == "HELLO FROM PYTHON\n"
        assert handle(read) == workspace
        back = await s.call_tool("read_file", {"path": "notes/hello.txt"})
        # The file does not end in a line break; the line before the handle's does.
        assert body(back.content[0].text) == "hello from python\n"
        assert back.structured_content["content"] == "hello from python"
        assert handle(back) == workspace
        listed = await s.call_tool("list_files", {"path": "notes"})
        assert [entry["path"] for entry in listed.structured_content["entries"]] == ["notes/hello.txt"]
        assert handle(listed) == workspace
        # Naming the session's workspace is the same as naming none: its files keep their short URIs.
        named = await s.call_tool("write_file", {"path": "notes/bye.txt", "content": "bye", "workspace": workspace})
        assert named.structured_content["uri"] == "file:///workspace/notes/bye.txt"
        assert handle(named) == workspace
        deleted = await s.call_tool("delete_file", {"path": "notes/bye.txt"})
        assert handle(deleted) == workspace

        resources = (await s.list_resources()).resources
        assert "file:///workspace/notes/hello.txt" in [str(r.uri) for r in resources]
        assert "file:///workspace/notes/bye.txt" not in [str(r.uri) for r in resources]
        contents = (await s.read_resource("file:///workspace/notes/hello.txt")).contents
        assert contents[0].text == "hello from python"

        prompt = await s.get_prompt("commit_message", {"diff": "+print('hi')"})
        assert "Conventional Commits" in prompt.messages[0].content.text

        total = await s.call_tool("calculate_sum", {"a": 2.5, "b": 4})
        assert total.content[0].text == "6.5"
        assert total.structured_content == {"sum": 6.5}


@pytest.mark.parametrize("transport", ["sse", "streamable-http"])
async def test_bad_arguments_are_tool_errors_the_model_can_read(transport, url, auth, toolhost_bin, stdio_env):
    async with session(transport, url, auth, toolhost_bin, stdio_env) as s:
        await s.initialize()
        wrong = await s.call_tool("calculate_sum", {"a": "three", "b": 1})
        assert wrong.is_error
        assert '`a`: "three" is not of type "number"' in wrong.content[0].text
        escape = await s.call_tool("read_file", {"path": "../../etc/passwd"})
        assert escape.is_error
        assert "'..' is not allowed" in escape.content[0].text
        # An error names no workspace.
        assert escape.structured_content is None and "workspace: ws_" not in escape.content[0].text
        # The session is still fine.
        ok = await s.call_tool("calculate_sum", {"a": 1, "b": 2})
        assert ok.content[0].text == "3"


async def test_progress_and_change_notifications_reach_the_client(url, auth, toolhost_bin, stdio_env):
    seen = []
    changed = anyio.Event()

    async def on_message(message):
        if isinstance(message, types.ServerNotification):
            seen.append(message.method)
            if message.method == "notifications/resources/list_changed":
                changed.set()

    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    async with session("streamable-http", url, auth, toolhost_bin, stdio_env, message_handler=on_message) as s:
        await s.initialize()
        code = "import time\ntime.sleep(2.5)\nopen('made.txt', 'w').write('x')"
        result = await s.call_tool("code_interpreter", {"code": code}, progress_callback=on_progress)
        assert not result.is_error, result.content[0].text
        assert len(progress) >= 2, progress
        assert progress[0][1] == pytest.approx(30.0)
        with anyio.fail_after(10):
            await changed.wait()
        assert "notifications/resources/list_changed" in seen, seen


@pytest.mark.parametrize("transport", ["sse", "streamable-http"])
async def test_a_client_that_sets_a_log_level_hears_of_a_call_that_hit_its_limit(
    transport, url, auth, toolhost_bin, stdio_env
):
    heard = []

    async def on_log(params):
        heard.append((params.level, params.logger, params.data))

    async with session(transport, url, auth, toolhost_bin, stdio_env, logging_callback=on_log) as s:
        await s.initialize()
        # Nothing is sent before the client asks.
        quiet = await s.call_tool("code_interpreter", {"code": "while True: pass", "timeout_s": 0.5})
        assert quiet.structured_content["status"] == "timeout"
        assert heard == []
        await s.set_logging_level("warning")
        slow = await s.call_tool("code_interpreter", {"code": "while True: pass", "timeout_s": 0.5})
        assert slow.structured_content["status"] == "timeout"
        # Sent before the result, so it is here now.
        assert heard == [("warning", "toolhost", "code_interpreter hit its time limit")], heard
        await s.set_logging_level("error")
        again = await s.call_tool("code_interpreter", {"code": "while True: pass", "timeout_s": 0.5})
        assert again.structured_content["status"] == "timeout"
        assert len(heard) == 1, "a warning is below the error level the client asked for"


async def test_a_subscription_may_name_a_file_that_does_not_exist_yet(url, auth, toolhost_bin, stdio_env):
    updated = anyio.Event()
    uris = []

    async def on_message(message):
        if isinstance(message, types.ServerNotification) and message.method == "notifications/resources/updated":
            uris.append(str(message.params.uri))
            updated.set()

    async with session("streamable-http", url, auth, toolhost_bin, stdio_env, message_handler=on_message) as s:
        await s.initialize()
        await s.subscribe_resource("file:///workspace/later/report.txt")
        for never in ("file:///workspace/../etc/passwd", "file:///nosuchroot/a.txt", "not a uri"):
            with pytest.raises(Exception) as refused:
                await s.subscribe_resource(never)
            assert "cannot subscribe" in str(refused.value), (never, refused.value)
        wrote = await s.call_tool("write_file", {"path": "later/report.txt", "content": "done"})
        assert not wrote.is_error
        with anyio.fail_after(10):
            await updated.wait()
        assert "file:///workspace/later/report.txt" in uris


async def test_a_large_output_stays_under_the_sse_event_limit(url, auth, toolhost_bin, stdio_env):
    # The legacy SSE client drops the whole connection on an event over 1 MiB; results are capped
    # well below it, and the whole output is saved in the workspace.
    async with session("sse", url, auth, toolhost_bin, stdio_env) as s:
        await s.initialize()
        flood = await s.call_tool("code_interpreter", {"code": "print('x' * 3_000_000)"})
        outcome = flood.structured_content
        assert outcome["stdout_truncated"]
        assert len(json.dumps(outcome)) < 512 * 1024
        saved = outcome["files"][0]["path"]
        assert saved.startswith(".toolhost/") and saved.endswith(".stdout")
        part = await s.call_tool("read_file", {"path": saved, "offset": 2_999_990})
        assert part.structured_content["content"] == "xxxxxxxxxx\n"
