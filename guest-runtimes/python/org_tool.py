# Runs an org tool's script as `__main__`, with its folder (mounted read-only at /tool)
# importable; the arguments are on stdin, the result goes to stdout.
import sys
sys.path.insert(0, '/tool')
__tool_globals = {'__name__': '__main__', '__file__': '/tool/main.py', '__builtins__': __builtins__}
exec(compile(open('/tool/main.py', encoding='utf-8').read(), '/tool/main.py', 'exec'), __tool_globals)
