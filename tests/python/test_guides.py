"""The examples in the integration guides (docs/integrations/*.md), run as written against the
real server. An example is the fenced block right after a `<!-- tested: NAME -->` line; every
NAME has a check here, and every Python and JSON block in the guides must be one.

- Python programs run in a subprocess with this interpreter, TOOLHOST_URL and TOOLHOST_TOKEN set
  and `toolhost` on PATH: once without model API keys, when they must print what the page says,
  and once with made-up keys and no way out of this machine, when they must fail sending their
  first model request and nowhere else.
- Claude Desktop entries are started as Claude starts them (command, args, env over a minimal
  environment) with our binary, cache and a temp workspace in place of the reader's paths, and
  spoken to with the `mcp` SDK's stdio client.
- Inspector commands run in bash with `npx -y PACKAGE@VERSION` replaced by that package's binary
  from tests/python/node, installed with `npm ci` from its lock file once per lock file."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANDLE_LINE, body, handle, npm_install, split_handle, text_block

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ROOT / "docs" / "integrations"
NODE = Path(__file__).resolve().parent / "node"
# The server the pages talk to; the tests put the real one in its place.
READER_URL = "http://127.0.0.1:8000"
MARK = "<!-- tested: "
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
TIMEOUT = 120

# The last line of a printed result's text: the handle of the workspace the call used.
NAMED = HANDLE_LINE.pattern
# What each Python example must print (it also must exit 0): text, or a pattern to search for.
PRINTS = {
    "mistral-streamable-http": [
        "'code_interpreter'",
        text_block("42\\n"),
        # The gotcha: a plot is a text line naming the file, never an image block.
        "outputs/figure-1.png (image/png",
    ],
    "mistral-sse": [text_block("120\\n")],
    "openai-agents-streamable-http": ["'code_interpreter'", re.compile(rf"code_interpreter: 42\n{NAMED}\n")],
    "openai-agents-sse-and-stdio": [
        re.compile(rf"toolhost-sse 45\n{NAMED}\n"),
        re.compile(rf"toolhost-stdio 45\n{NAMED}\n"),
    ],
    "pydantic-ai": ["'code_interpreter'", "status: ok stdout: 42\n"],
}
OTHERS = {
    "claude-desktop-stdio",
    "claude-desktop-headers",
    "claude-desktop-mcp-remote",
    "inspector-cli",
    "inspector-cli-stdio",
}


def examples():
    """{name: (language, text, page)} for every marked block, and the unmarked blocks."""
    marked, unmarked = {}, []
    for page in sorted(GUIDES.glob("*.md")):
        text = page.read_text()
        for fence in FENCE.finditer(text):
            before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if before.startswith(MARK):
                name = before[len(MARK) :].removesuffix(" -->").strip()
                assert name not in marked, f"{page.name}: example {name!r} is marked twice"
                marked[name] = (fence.group(1), fence.group(2), page.name)
            else:
                unmarked.append((fence.group(1), page.name, fence.group(2)[:60]))
    return marked, unmarked


EXAMPLES, UNMARKED = examples()


def example(name, language):
    lang, text, page = EXAMPLES[name]
    assert lang == language, f"{page}: {name} is a {lang!r} block, expected {language!r}"
    return text


def test_every_example_is_checked_and_every_program_is_an_example():
    assert set(EXAMPLES) == set(PRINTS) | OTHERS
    untested = [(lang, page, start) for lang, page, start in UNMARKED if lang in ("python", "json")]
    assert not untested, f"Python and JSON blocks must be tested examples: {untested}"


def server_env(**extra):
    """The environment for an example: the real server where the pages say READER_URL, our
    binary first on PATH, and no model keys so nothing calls a model."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PATH"] = os.pathsep.join([str(Path(os.environ["TOOLHOST_BIN"]).parent), env.get("PATH", "")])
    env.update(TOOLHOST_URL=os.environ["TOOLHOST_URL"], TOOLHOST_TOKEN=os.environ["TOOLHOST_TOKEN"], **extra)
    return env


def run(argv, env, cwd):
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def python_script(name, tmp_path):
    code = example(name, "python")
    # The page's own defaults must be what the test overrides, or it would test another server.
    assert f'os.environ.get("TOOLHOST_URL", "{READER_URL}")' in code
    assert 'os.environ.get("TOOLHOST_TOKEN")' in code
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return script


@pytest.mark.parametrize("name", sorted(PRINTS))
def test_python_example(name, tmp_path):
    script = python_script(name, tmp_path)
    assert os.path.samefile(shutil.which("toolhost", path=server_env()["PATH"]), os.environ["TOOLHOST_BIN"])

    stdout = run([sys.executable, str(script)], server_env(), tmp_path)

    for expected in PRINTS[name]:
        found = expected.search(stdout) if isinstance(expected, re.Pattern) else expected in stdout
        assert found, f"{name} should print {expected!r}; it printed:\n{stdout}"


GUARD = re.compile(r'^( *)if os\.environ\.get\("(\w+_API_KEY)"\):$')
# Nothing listens on the discard port: through it, every model request fails at once, here.
NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize("name", sorted(PRINTS))
def test_python_example_gets_as_far_as_its_model_request(name, tmp_path):
    """The part behind the key check, run with a made-up key and every outside request sent
    through a proxy that is not there: it must build the model request (tools converted for the
    model included) and fail only when sending it."""
    script = python_script(name, tmp_path)
    lines = script.read_text().splitlines()
    keys, guarded = set(), set()
    for number, line in enumerate(lines, 1):
        if match := GUARD.match(line):
            keys.add(match.group(2))
            indent = len(match.group(1))
            for inner, body in enumerate(lines[number:], number + 1):
                if body.strip() and len(body) - len(body.lstrip()) <= indent:
                    break
                guarded.add(inner)
    assert keys, f"{name} must call its model only behind an `if os.environ.get(\"..._API_KEY\"):`"
    proxies = {var: NOWHERE for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
    proxies |= {var.lower(): value for var, value in proxies.items()}
    env = server_env(
        **{key: "not-a-real-key" for key in keys},
        **proxies,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        OPENAI_AGENTS_DISABLE_TRACING="1",
    )

    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )

    assert done.returncode != 0, f"{name} should fail at its model request:\n{done.stdout}\n{done.stderr}"
    frames = [int(n) for n in re.findall(rf'File "{re.escape(str(script))}", line (\d+)', done.stderr)]
    assert frames and frames[-1] in guarded, f"{name} failed outside its model call:\n{done.stderr}"
    assert re.search(r"Connect(ion)?Error", done.stderr.strip().splitlines()[-1]), done.stderr


def claude_entry(name):
    servers = json.loads(example(name, "json"))["mcpServers"]
    assert list(servers) == ["toolhost"]
    return servers["toolhost"]


async def session_over_stdio(command, args, env, code, workspace=None):
    """initialize, tools/list and one code_interpreter call over stdio, as Claude Desktop would;
    returns the call's text but its last line, which must name the workspace: a handle, or
    `workspace` (the folder `--workspace` gave)."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    async with stdio_client(StdioServerParameters(command=command, args=args, env=env)) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "toolhost"
            names = {tool.name for tool in (await session.list_tools()).tools}
            assert {"code_interpreter", "read_file", "write_file"} <= names, names
            ran = await session.call_tool("code_interpreter", {"code": code})
            assert not ran.is_error, ran.content[0].text
            handle(ran, named=workspace)
            return split_handle(ran.content[0].text, named=workspace)[0]


@pytest.mark.anyio
async def test_claude_desktop_stdio_entry(tmp_path):
    entry = claude_entry("claude-desktop-stdio")
    assert set(entry) == {"command", "args", "env"}
    # Claude Desktop does not search the shell's PATH: the page must give a full path.
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).name == "toolhost"
    args = entry["args"]
    assert args[0] == "stdio" and args[1] == "--workspace" and len(args) == 3, args
    assert set(entry["env"]) == {"TOOLHOST_CACHE", "TOOLHOST_LOG"}

    # The reader's paths become ours; the rest runs as written.
    workspace = tmp_path / "kept" / "workspace"
    env = {**entry["env"], "TOOLHOST_CACHE": os.environ["TOOLHOST_CACHE"]}
    code = "open('notes.txt', 'w').write('kept')\nprint(6 * 7)"
    text = await session_over_stdio(
        os.environ["TOOLHOST_BIN"], ["stdio", "--workspace", str(workspace)], env, code, workspace=str(workspace)
    )

    assert text.startswith("42\n"), text
    # --workspace, as the page says, creates the folder and keeps the files after the session.
    assert (workspace / "notes.txt").read_text() == "kept"


def node_bin(tool):
    """The pinned Node clients, installed once per lock file beside the test venv."""
    return npm_install(NODE, "guide-clients", scripts=False) / "node_modules" / ".bin" / tool


def pinned(package):
    return json.loads((NODE / "package.json").read_text())["dependencies"][package]


@pytest.mark.anyio
async def test_claude_desktop_mcp_remote_entry(tmp_path, token):
    entry = claude_entry("claude-desktop-mcp-remote")
    assert set(entry) == {"command", "args"}
    assert entry["command"] == "npx"
    npx, package, url, flag, _headers_path = entry["args"]
    assert (npx, flag) == ("-y", "--header-file")
    # The page pins the version the test runs.
    assert package == f"mcp-remote@{pinned('mcp-remote')}"
    assert url.startswith("https://") and url.endswith("/mcp"), url

    headers = tmp_path / "headers.txt"
    headers.write_text(example("claude-desktop-headers", "text").replace("<token>", token))
    # mcp-remote keeps its state under HOME; keep it in tmp_path.
    text = await session_over_stdio(
        str(node_bin("mcp-remote")),
        [f"{os.environ['TOOLHOST_URL']}/mcp", flag, str(headers)],
        {"HOME": str(tmp_path)},
        "sum(range(10))",
    )
    assert text == "45\n"


def inspector_script(name):
    """The page's commands with `npx -y @modelcontextprotocol/inspector@VERSION` as our install."""
    script = example(name, "sh")
    npx = f"npx -y @modelcontextprotocol/inspector@{pinned('@modelcontextprotocol/inspector')}"
    assert npx in script, f"{name} should run {npx}"
    return script.replace(npx, shlex.quote(str(node_bin("mcp-inspector")))).replace(
        READER_URL, os.environ["TOOLHOST_URL"]
    )


def json_documents(text):
    """The JSON documents printed one after the other."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def test_inspector_cli_over_http_and_sse(tmp_path):
    script = inspector_script("inspector-cli")
    # The Inspector keeps its state under HOME; keep it in tmp_path.
    stdout = run(["bash", "-euc", script], server_env(HOME=str(tmp_path)), tmp_path)

    listed, called = json_documents(stdout)
    assert "code_interpreter" in {tool["name"] for tool in listed["tools"]}
    [text] = called["content"]
    assert text["type"] == "text" and body(text["text"]) == "42\n", called
    assert called["structuredContent"]["status"] == "ok"
    handle(called)


def test_inspector_cli_over_stdio(tmp_path):
    script = inspector_script("inspector-cli-stdio")
    # The Inspector passes `toolhost stdio` little more than HOME and PATH, so the cache must be
    # where the page says it is by default: in HOME, which is tmp_path here.
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "toolhost").symlink_to(os.environ["TOOLHOST_CACHE"])
    stdout = run(["bash", "-euc", script], server_env(HOME=str(tmp_path)), tmp_path)

    result = json.loads(stdout)["result"]
    [text] = result["content"]
    assert text["type"] == "text" and body(text["text"]) == "45\n", result
    handle(result)
