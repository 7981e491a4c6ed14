# expect: {"status": "ok", "stdout_excludes": ["root:"], "stdout_contains": ["refused PermissionError"]}
# A link to an absolute host path cannot be made, nor followed.
import os
try:
    os.symlink("/etc/passwd", "passwd")
    print(open("passwd").read())
except OSError as e:
    print("refused", type(e).__name__)
