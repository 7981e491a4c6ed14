# expect: {"status": "ok", "stdout": "/workspace\n/workspace/rel.txt\n"}
import os
open("rel.txt", "w").write("x")
print(os.getcwd())
print(os.path.abspath("rel.txt"))
