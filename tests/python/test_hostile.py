"""A tenant who tries to hurt the service, through the official `mcp` SDK over streamable HTTP:
memory a large call took is given back, and a workspace quota holds inside the call."""

from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import default_server

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def session(url):
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=120.0)) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_memory_a_large_call_took_is_given_back(tmp_path):
    with default_server(tmp_path) as (url, log):
        async with session(url) as s:
            await s.call_tool("code_interpreter", {"code": "print(1)"})
            baseline = rss_mb(log.pid)
            for _ in range(2):
                # fresh: each call its own 600 MB, not one more beside the last one's (kept as state).
                result = await s.call_tool(
                    "code_interpreter",
                    {"code": "import numpy as np\na = np.ones(600 << 20, dtype=np.uint8)\nprint(a.size)", "fresh": True},
                )
                assert not result.is_error, result
                assert result.structured_content["stdout"] == f"{600 << 20}\n"
            await anyio.sleep(1)  # the slot is reset just after the result is sent
            after = rss_mb(log.pid)
        assert after < baseline + 150, f"RSS {baseline:.0f} MB before, {after:.0f} MB after two 600 MB calls"


async def test_a_quota_holds_inside_the_call(tmp_path):
    with default_server(tmp_path, "--workspace-mb", "8") as (url, _log):
        async with session(url) as s:
            code = (
                "import errno\nn = 0\ntry:\n    with open('grow.bin', 'ab') as f:\n"
                "        for _ in range(64):\n            f.write(b'x' * (1 << 20)); n += 1\n"
                "except OSError as e:\n    print(n, errno.errorcode[e.errno])"
            )
            result = await s.call_tool("code_interpreter", {"code": code})
            assert result.structured_content["stdout"] == "8 ENOSPC\n", result.structured_content
            listed = await s.call_tool("list_files", {})
            assert "grow.bin" in listed.content[0].text
            refused = await s.call_tool("write_file", {"path": "more.txt", "content": "x"})
            assert refused.is_error and "quota" in refused.content[0].text, refused
