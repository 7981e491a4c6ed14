# expect: {"status": "out_of_memory", "error_type": "MemoryError"}
# timeout: 30
# With the recursion limit lifted, the guest runs into its wasm stack, which is its own: the call
# ends with a MemoryError ("call stack exhausted") well before its deadline, and the host is
# untouched. (With a short deadline the ending depended on the machine's speed.)
import sys
sys.setrecursionlimit(10**7)
def down(n):
    return down(n + 1)
down(0)
