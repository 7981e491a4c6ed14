"""The integrations the README documents, each run against the real server up to the point
where a model would be called (no API keys here): Mistral's MCP clients with RunContext, the
OpenAI Agents SDK's MCP servers, pydantic-ai's MCPToolset, and `mcp.Client`, which probes
`server/discover` and speaks 2026-07-28 when the server does (toolhost does, on /mcp)."""

import time

import pytest

from conftest import body, handle, split_handle

pytestmark = pytest.mark.anyio

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"


async def test_mistral_sse_and_streamable_http_clients(url, auth):
    from mistralai.extra.mcp.sse import MCPClientSSE, SSEServerParams
    from mistralai.extra.mcp.streamable_http import MCPClientStreamableHTTP, StreamableHTTPServerParams
    from mistralai.extra.run.context import RunContext

    for client in (
        MCPClientSSE(sse_params=SSEServerParams(url=f"{url}/sse", headers=auth, timeout=100)),
        MCPClientStreamableHTTP(params=StreamableHTTPServerParams(url=f"{url}/mcp", headers=auth)),
    ):
        await client.initialize()
        try:
            names = {t.function.name for t in await client.get_tools()}
            assert {"code_interpreter", "read_file", "write_file"} <= names
            [printed] = await client.execute_tool("code_interpreter", {"code": "print(6 * 7)"})
            assert printed["type"] == "text"
            output, workspace = split_handle(printed["text"])
            assert output == "42\n"
            # Mistral's client refuses any non-text block: a plot comes back as text naming the file.
            [plotted] = await client.execute_tool("code_interpreter", {"code": PLOT})
            assert plotted["type"] == "text" and "outputs/figure-1.png" in body(plotted["text"])
            # One session, one workspace: the model's next call finds the files of the last.
            assert split_handle(plotted["text"])[1] == workspace
        finally:
            await client.aclose()

    async with RunContext(model="mistral-medium-latest") as run_ctx:
        await run_ctx.register_mcp_client(
            mcp_client=MCPClientSSE(sse_params=SSEServerParams(url=f"{url}/sse", headers=auth, timeout=100))
        )
        assert "code_interpreter" in [t.function.name for t in run_ctx.get_tools()]


async def test_openai_agents_mcp_servers(url, auth, toolhost_bin, stdio_env):
    from agents import Agent
    from agents.mcp import MCPServerSse, MCPServerStdio, MCPServerStreamableHttp
    from agents.run_context import RunContextWrapper

    servers = [
        MCPServerSse(params={"url": f"{url}/sse", "headers": auth, "timeout": 30}, name="toolhost-sse",
                     client_session_timeout_seconds=60),
        MCPServerStreamableHttp(params={"url": f"{url}/mcp", "headers": auth, "timeout": 30}, name="toolhost",
                                client_session_timeout_seconds=60),
        MCPServerStdio(params={"command": toolhost_bin, "args": ["stdio"], "env": stdio_env}, name="toolhost-stdio",
                       client_session_timeout_seconds=60),
    ]
    for server in servers:
        started = time.monotonic()
        await server.connect()
        try:
            assert time.monotonic() - started < 5, "connecting must not wait on a discover timeout"
            names = {t.name for t in await server.list_tools()}
            assert "code_interpreter" in names
            result = await server.call_tool("code_interpreter", {"code": "sum(range(10))"})
            assert body(result.content[0].text) == "45\n"
            workspace = handle(result)
            again = await server.call_tool("list_files", {})
            if isinstance(server, MCPServerStreamableHttp):
                # The SDK speaks 2026-07-28 over /mcp, without a session: a call naming no
                # workspace gets a new one, and one naming the handle continues the first's.
                assert handle(again) != workspace
                again = await server.call_tool("list_files", {"workspace": workspace})
            # Over SSE and stdio, a session, every call works in the session's workspace.
            assert handle(again) == workspace
            agent = Agent(name="analyst", instructions="Use the tools.", mcp_servers=[server],
                          mcp_config={"convert_schemas_to_strict": True})
            tools = await agent.get_mcp_tools(RunContextWrapper(context=None))
            assert {t.name for t in tools} == names
        finally:
            await server.cleanup()


async def test_pydantic_ai_toolset(url, auth, token):
    from fastmcp import Client
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.models.test import TestModel

    for toolset, in_session in (
        (MCPToolset(f"{url}/sse", headers=auth), True),
        (MCPToolset(f"{url}/mcp", headers=auth), False),
        # The guide's way to keep one workspace over /mcp: a session's handshake.
        (MCPToolset(Client(f"{url}/mcp", auth=token, mode="legacy")), True),
    ):
        async with toolset:
            names = {t.name for t in await toolset.list_tools()}
            assert "calculate_sum" in names
            total = await toolset.direct_call_tool("calculate_sum", {"a": 40, "b": 2})
            assert total in (42, 42.0, {"sum": 42.0}), total
            # The structured content is what pydantic-ai returns; it names the workspace.
            wrote = await toolset.direct_call_tool("write_file", {"path": "n.txt", "content": "7"})
            workspace = wrote["workspace"]
            listed = await toolset.direct_call_tool("list_files", {})
            if in_session:
                # The next call works in the session's workspace.
                assert listed["workspace"] == workspace and [e["path"] for e in listed["entries"]] == ["n.txt"]
            else:
                # 2026-07-28, without a session: a call naming no workspace gets a new, empty one.
                assert listed["workspace"] != workspace and listed["entries"] == [], listed
            # A call that names the handle works on the same files.
            named = {"code": "print(open('n.txt').read())", "workspace": workspace}
            read = await toolset.direct_call_tool("code_interpreter", named)
            assert read["workspace"] == workspace and read["stdout"] == "7\n", read

    agent = Agent(TestModel(call_tools=["calculate_sum"]), toolsets=[MCPToolset(f"{url}/mcp", headers=auth)])
    async with agent:
        result = await agent.run("add two numbers")
    assert "calculate_sum" in result.output


async def test_the_discover_probe_negotiates_2026_07_28_at_once(url, token):
    import httpx2
    from mcp import Client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        from mcp.client.streamable_http import streamable_http_client

        started = time.monotonic()
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            assert time.monotonic() - started < 5
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("calculate_sum", {"a": 1, "b": 1})
            assert result.content[0].text == "2"
