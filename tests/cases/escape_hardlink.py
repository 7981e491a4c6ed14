# expect: {"status": "ok", "stdout": "refused PermissionError\n"}
# A hard link from the read-only stdlib into the workspace is refused.
import os
try:
    os.link("/usr/local/lib/python315.zip", "/workspace/stdlib.zip")
    print("linked")
except OSError as e:
    print("refused", type(e).__name__)
