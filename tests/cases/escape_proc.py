# expect: {"status": "ok", "stdout": "FileNotFoundError\nFileNotFoundError\n"}
# No /proc, no /dev: nothing of the host process is visible.
for path in ["/proc/self/environ", "/dev/mem"]:
    try:
        open(path, "rb").read()
        print("opened", path)
    except OSError as e:
        print(type(e).__name__)
