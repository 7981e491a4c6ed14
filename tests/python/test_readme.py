"""The README's first session, as a newcomer runs it: `toolhost serve` started from the
repository root with its defaults (loopback, no token, ./tools), then the README's program,
unchanged but for the port."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- tested: readme-session -->\n```python\n(.*?)^```$", re.S | re.M)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_first_session(tmp_path):
    program = BLOCK.search((ROOT / "README.md").read_text()).group(1)
    assert 'Client("http://127.0.0.1:8000/mcp")' in program
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLHOST_")}
    env.update(TOOLHOST_CACHE=os.environ["TOOLHOST_CACHE"], TOOLHOST_WORKSPACES=str(tmp_path / "ws"), TOOLHOST_LOG="warn")
    server = subprocess.Popen(
        [os.environ["TOOLHOST_BIN"], "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the server stopped: {server.stderr.read()}"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready within 60 s"
            time.sleep(0.1)
        script = tmp_path / "session.py"
        script.write_text(program.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert "'code_interpreter'" in lines[0] and "'csv_profile'" in lines[0], lines[0]
        assert lines[1] == (
            "{'distinct': 3, 'max': 120.0, 'mean': 80.0, 'min': 40.0, 'missing': 0, 'name': 'amount', 'std': 40.0, "
            "'type': 'integer'}"
        ), lines[1]
        assert lines[2] == "{'north': 160, 'south': 80}", done.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
