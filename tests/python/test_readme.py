"""The README's first session, as a newcomer runs it: `toolhost serve` started from the
repository root with its defaults (loopback, no token, ./tools, info logs), then the README's
program, unchanged but for the port. The server stays quiet while idle, and the client prints
nothing on stderr (a clean session close included)."""

import re
import subprocess
import sys
import time

from conftest import HANDLE_LINE, ROOT, default_server

BLOCK = re.compile(r"<!-- tested: readme-session -->\n```python\n(.*?)^```$", re.S | re.M)
IDLE_SECONDS = 10


def test_the_readme_first_session(tmp_path):
    program = BLOCK.search((ROOT / "README.md").read_text()).group(1)
    assert 'Client("http://127.0.0.1:8000/mcp")' in program
    with default_server(tmp_path) as (url, log):
        # A measurement window, not a wait for something: an idle server must not keep logging.
        at_ready = len(log.lines)
        time.sleep(IDLE_SECONDS)
        idle = log.lines[at_ready:]
        assert len(idle) <= 2, f"{len(idle)} log lines in {IDLE_SECONDS} idle seconds:\n" + "\n".join(idle)

        script = tmp_path / "session.py"
        script.write_text(program.replace("http://127.0.0.1:8000", url))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"the first session printed on stderr:\n{done.stderr}"
        lines = done.stdout.splitlines()
        assert "'code_interpreter'" in lines[0] and "'csv_profile'" in lines[0], lines[0]
        assert lines[1] == (
            "{'distinct': 3, 'max': 120.0, 'mean': 80.0, 'min': 40.0, 'missing': 0, 'name': 'amount', 'std': 40.0, "
            "'type': 'integer'}"
        ), lines[1]
        assert lines[2] == "{'north': 160, 'south': 80}", done.stdout
        # The text's last line names the workspace the program kept passing on.
        assert HANDLE_LINE.fullmatch(lines[3]) and len(lines) == 4, done.stdout
