# expect: {"status": "error", "exit_code": 7, "error_type": "SystemExit", "stdout": "before exit\n"}
import sys
print("before exit")
sys.exit(7)
