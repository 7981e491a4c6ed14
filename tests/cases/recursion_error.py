# expect: {"status": "ok", "stdout": "RecursionError\n"}
# Deep recursion is a Python RecursionError, not a crash.
def down(n):
    return down(n + 1)
try:
    down(0)
except RecursionError as e:
    print(type(e).__name__)
