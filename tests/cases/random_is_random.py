# expect: {"status": "ok", "stdout": "True\n"}
# Entropy comes from the host's secure random source.
import os, random
print(len(set(os.urandom(16) for _ in range(5))) == 5 and random.random() != random.random())
