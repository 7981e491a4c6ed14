# expect: {"status": "error", "error_type": "SyntaxError", "stderr_contains": ["File \"<code>\", line 5"], "stdout": ""}
# A syntax error names the user's line, and nothing of the code runs.
print("never printed")

x = (
