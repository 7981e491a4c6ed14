# expect: {"status": "ok", "stdout": "['python315.zip']\nrefused\nrefused\n"}
# The stdlib folder holds only the zip, and cannot be written.
import os
print(os.listdir("/usr/local/lib"))
for path in ["/usr/local/lib/python315.zip", "/usr/local/lib/evil.py"]:
    try:
        open(path, "ab").write(b"x")
        print("wrote", path)
    except OSError:
        print("refused")
