# expect: {"status": "ok", "stdout": "FileNotFoundError\nno HOME from the host\n"}
# runtime: python-lite
import os
try:
    open("/etc/passwd")
except OSError as e:
    print(type(e).__name__)
print("no HOME from the host" if os.environ.get("HOME") == "/tmp" else os.environ)
