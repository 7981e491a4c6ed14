# expect: {"status": "ok", "stdout_excludes": ["READ"], "stdout_contains": ["PermissionError"]}
# `..` cannot climb out of a preopened folder.
for path in ["/workspace/../../etc/hostname", "../../../../etc/hostname", "/tmp/../../../proc/self/status"]:
    try:
        print("READ", open(path).read())
    except OSError as e:
        print(path, type(e).__name__)
