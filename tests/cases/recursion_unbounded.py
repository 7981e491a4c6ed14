# expect: {"status": "timeout"}
# timeout: 2
# With the recursion limit lifted, the guest can only spend its own time: the call ends at its
# deadline and the host is untouched.
import sys
sys.setrecursionlimit(10**7)
def down(n):
    return down(n + 1)
down(0)
