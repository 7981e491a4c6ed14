"""Protocol 2026-07-28 (session-less) on /mcp with the official SDK's default `mcp.Client`: it
negotiates 2026-07-28 through `server/discover` and every tool, resource and prompt works; a
call that names no workspace gets a new one, and a handle passed back continues it, also from
a session of the older era and over the legacy SSE transport; `/sse` refuses the probe at once."""

import json
import time

import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

FILE_TOOLS = {"code_interpreter", "list_files", "read_file", "write_file", "delete_file"}


def named(result):
    """The handle a result names, checked to be its text's last line too."""
    ws = result.structured_content["workspace"]
    assert result.content[0].text.endswith(f"\nworkspace: {ws}"), result.content[0].text
    return ws


async def test_the_default_client_speaks_2026_07_28_and_continues_a_workspace_by_handle(url, auth):
    async with httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=120.0)) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            assert client.protocol_version == "2026-07-28"
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for name in FILE_TOOLS:
                assert "workspace" in tools[name].input_schema["properties"], name
                assert "workspace" in tools[name].output_schema["properties"], name
            assert "workspace" not in tools["calculate_sum"].input_schema["properties"]

            written = await client.call_tool("write_file", {"path": "data/a.csv", "content": "x\n1\n2\n"})
            ws = named(written)
            # No session to stand for: the URI names the workspace.
            assert written.structured_content["uri"] == f"file:///workspaces/{ws}/data/a.csv"
            # No session: a call naming no workspace gets a new one.
            other = await client.call_tool("list_files", {})
            assert named(other) != ws and other.structured_content["entries"] == []

            code = "import pandas as pd\nwith open('out.txt', 'w') as f:\n    f.write('3')\nprint(pd.read_csv('data/a.csv').x.sum())"
            ran = await client.call_tool("code_interpreter", {"code": code, "workspace": ws})
            assert not ran.is_error, ran.content[0].text
            assert named(ran) == ws and ran.structured_content["stdout"] == "3\n"
            assert ran.structured_content["files"][0]["uri"] == f"file:///workspaces/{ws}/out.txt"
            listed = await client.call_tool("list_files", {"workspace": ws})
            assert {e["path"] for e in listed.structured_content["entries"]} == {"data", "out.txt"}
            read = await client.call_tool("read_file", {"path": "out.txt", "workspace": ws})
            assert read.structured_content["content"] == "3"
            resource = await client.read_resource(f"file:///workspaces/{ws}/data/a.csv")
            assert resource.contents[0].text == "x\n1\n2\n"
            deleted = await client.call_tool("delete_file", {"path": "out.txt", "workspace": ws})
            assert not deleted.is_error and named(deleted) == ws
            total = await client.call_tool("calculate_sum", {"a": 1, "b": 2})
            assert total.structured_content == {"sum": 3} and total.content[0].text == "3"
            prompt = await client.get_prompt("commit_message", {"diff": "+x"})
            assert prompt.messages

            bad = await client.call_tool("read_file", {"path": "a", "workspace": "not-a-handle"})
            assert bad.is_error and "is not a workspace handle" in bad.content[0].text

        # The older era, a session on /mcp: the handle continues the same files.
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as legacy:
            assert legacy.protocol_version != "2026-07-28"
            read = await legacy.call_tool("read_file", {"path": "data/a.csv", "workspace": ws})
            assert read.structured_content["content"] == "x\n1\n2\n" and named(read) == ws
            first = named(await legacy.call_tool("list_files", {}))
            second = named(await legacy.call_tool("list_files", {}))
            assert first == second != ws, "a session keeps one default workspace"

    # And over the legacy HTTP+SSE transport.
    async with sse_client(f"{url}/sse", headers=auth) as (reader, writer):
        async with ClientSession(reader, writer) as session:
            await session.initialize()
            ran = await session.call_tool("code_interpreter", {"code": "print(open('data/a.csv').read().split())", "workspace": ws})
            assert ran.structured_content["stdout"] == "['x', '1', '2']\n" and named(ran) == ws


async def test_a_discover_probe_on_the_legacy_transport_is_refused_at_once(url, auth):
    """A client probing `server/discover` over /sse + /messages gets an error on the stream at
    once (the legacy transport speaks the session eras only), so it falls back to initialize."""
    probe = {
        "jsonrpc": "2.0", "id": 1, "method": "server/discover",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "probe", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    }
    started = time.monotonic()
    async with httpx2.AsyncClient(headers=auth, timeout=10) as http:
        async with http.stream("GET", f"{url}/sse") as stream:
            events = stream.aiter_lines()
            endpoint = None
            async for line in events:
                if line.startswith("data: /messages"):
                    endpoint = line.removeprefix("data: ")
                    break
            posted = await http.post(f"{url}{endpoint}", json=probe)
            assert posted.status_code == 202, posted.text
            async for line in events:
                if line.startswith("data: {"):
                    answer = json.loads(line.removeprefix("data: "))
                    break
    assert answer["id"] == 1 and "error" in answer, answer
    assert "2026-07-28" not in answer["error"]["data"]["supported"], answer
    assert time.monotonic() - started < 5
