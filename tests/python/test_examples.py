"""The org tools shipped in tools/ (csv_profile, text_stats, log_summary), end to end through
the official `mcp` client on every transport: called directly, with bad input, and from guest
code in one program (code mode). The harness serves tools/ (TOOLHOST_TOOLS_DIR) with the logs
in fixtures/logs as the `logs` resource root (TOOLHOST_LOGS_ROOT)."""

import json
import os

import pytest

from conftest import body, handle
from test_official_sdk import session

pytestmark = pytest.mark.anyio

CSV = "city,population,area_km2,founded,capital\nParis,2102650,105.4,-250,true\nLyon,522250,47.9,-43,false\n" \
      "Nice,348085,71.9,,false\nLille,236710,34.8,1066,false\n"
EXAMPLES = {"csv_profile", "text_stats", "log_summary"}


@pytest.fixture
def stdio_args():
    return ["--tools-dir", os.environ["TOOLHOST_TOOLS_DIR"], "--root", f"logs={os.environ['TOOLHOST_LOGS_ROOT']}"]


def result(called):
    """The JSON an org tool answered: its text but the last line, which names the workspace."""
    handle(called)
    return json.loads(body(called.content[0].text))


@pytest.mark.parametrize("transport", ["sse", "streamable-http", "stdio"])
async def test_the_shipped_tools_work_on_every_transport(transport, url, auth, toolhost_bin, stdio_env, stdio_args):
    async with session(transport, url, auth, toolhost_bin, stdio_env, stdio_args) as s:
        await s.initialize()
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert EXAMPLES <= set(tools)
        assert tools["csv_profile"].annotations.read_only_hint is True
        assert tools["csv_profile"].output_schema["required"] == ["path", "rows", "columns"]

        workspace = handle(await s.call_tool("write_file", {"path": "data/cities.csv", "content": CSV}))
        profile = await s.call_tool("csv_profile", {"path": "data/cities.csv"})
        # The text is the structured content as JSON; only the structured content names the
        # workspace, which the text does on its own last line.
        assert profile.structured_content == {**result(profile), "workspace": workspace}
        columns = {c["name"]: c for c in profile.structured_content["columns"]}
        assert profile.structured_content["rows"] == 4
        assert columns["population"]["type"] == "integer"
        assert columns["population"]["max"] == 2102650
        assert columns["area_km2"]["type"] == "float"
        assert columns["founded"]["missing"] == 1
        assert columns["city"]["type"] == "text" and columns["city"]["distinct"] == 4
        assert columns["capital"]["type"] == "boolean"

        missing = await s.call_tool("csv_profile", {"path": "nope.csv"})
        assert missing.is_error and "no file 'nope.csv' in the workspace" in missing.content[0].text
        escape = await s.call_tool("csv_profile", {"path": "../../etc/passwd"})
        assert escape.is_error and "outside the workspace" in escape.content[0].text
        wrong = await s.call_tool("csv_profile", {"path": "data/cities.csv", "top": 99})
        assert wrong.is_error and "`top`: 99 is greater than the maximum of 20" in wrong.content[0].text

        counted = await s.call_tool("text_stats", {"text": "The cat sat. The cat ran away!\nDogs bark?"})
        stats = result(counted)
        assert (stats["words"], stats["lines"], stats["sentences"]) == (9, 2, 3)
        assert stats["top_words"][0] == {"word": "cat", "count": 2}
        counted_file = await s.call_tool("text_stats", {"path": "data/cities.csv", "top": 1})
        from_file = result(counted_file)
        assert from_file["lines"] == 5 and len(from_file["top_words"]) == 1
        # The session's workspace, for every call.
        assert handle(counted) == handle(counted_file) == workspace
        both = await s.call_tool("text_stats", {"text": "a", "path": "b"})
        assert both.is_error and both.content[0].text == "give exactly one of text or path"

        summarized = await s.call_tool("log_summary", {"path": "file:///logs/api"})
        assert handle(summarized) == workspace
        logs = result(summarized)
        assert logs["files"] == ["file:///logs/api/2026-11-20.log"]
        assert logs["lines"] == 10
        assert logs["levels"] == {"INFO": 3, "ERROR": 4, "WARN": 2, "DEBUG": 1}
        assert logs["top_problems"][0] == {"level": "ERROR", "message": "payment <n> failed: card declined", "count": 3}
        assert {"level": "WARN", "message": "slow query took <n> ms (orders)", "count": 2} in logs["top_problems"]
        assert (logs["first_timestamp"], logs["last_timestamp"]) == ("2026-11-20T09:59:58Z", "2026-11-20T10:06:22Z")
        outside = await s.call_tool("log_summary", {"path": "../workspace"})
        assert outside.is_error and "outside the logs root" in outside.content[0].text


async def test_one_program_calls_the_shipped_tools_in_a_loop(url, auth, toolhost_bin, stdio_env):
    code = """
from host import tools
for n in range(3):
    tools.write_file(path=f"part-{n}.csv", content="x,y\\n" + "".join(f"{i},{i * n}\\n" for i in range(10 * (n + 1))))
for entry in tools.list_files()["entries"]:
    profile = tools.csv_profile(path=entry["path"])
    y = next(c for c in profile["columns"] if c["name"] == "y")
    print(entry["path"], profile["rows"], y["max"])
print(tools.log_summary(path="api")["levels"]["ERROR"])
print(tools.text_stats(text="to be or not to be")["words"])
"""
    async with session("streamable-http", url, auth, toolhost_bin, stdio_env) as s:
        await s.initialize()
        ran = await s.call_tool("code_interpreter", {"code": code})
        assert not ran.is_error, ran.content[0].text
        assert ran.structured_content["stdout"] == "part-0.csv 10 0.0\npart-1.csv 20 19.0\npart-2.csv 30 58.0\n4\n6\n"
