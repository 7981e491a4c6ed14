# expect: {"status": "ok", "stdout": "héllo ✓ 🐍\n"}
print("héllo ✓ 🐍")
