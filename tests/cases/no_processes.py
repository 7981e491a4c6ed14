# expect: {"status": "ok", "stdout": "OSError\nno os.system\nRuntimeError\n"}
# No processes, no os.system, no threads.
import os, subprocess, threading
try:
    subprocess.run(["ls"])
except OSError as e:
    print(type(e).__name__)
print("no os.system" if not hasattr(os, "system") else "os.system exists")
try:
    threading.Thread(target=print).start()
except RuntimeError as e:
    print(type(e).__name__)
