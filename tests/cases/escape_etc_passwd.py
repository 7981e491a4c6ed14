# expect: {"status": "ok", "stdout": "FileNotFoundError\n"}
# The host's files do not exist for the guest.
try:
    print(open("/etc/passwd").read())
except OSError as e:
    print(type(e).__name__)
