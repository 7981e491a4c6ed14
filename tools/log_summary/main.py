"""log_summary: levels, recurring problems and time span of the logs under /logs."""

import collections
import json
import os
import re
import sys

ROOT = "/logs"
LEVEL = re.compile(r"\b(CRITICAL|FATAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE)\b")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
MASKS = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]
PROBLEMS = {"CRITICAL", "FATAL", "ERROR", "WARNING", "WARN"}

args = json.load(sys.stdin)
relative = args.get("path", "").removeprefix("file://").removeprefix(ROOT).lstrip("/")
target = os.path.normpath(os.path.join(ROOT, relative))
if target != ROOT and not target.startswith(ROOT + "/"):
    sys.exit(f"{args['path']!r} is outside the logs root")
if os.path.isdir(target):
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(target) for f in names)
elif os.path.isfile(target):
    files = [target]
else:
    sys.exit(f"no file or folder {relative or '/'!r} under the logs root; read file:///logs/ to see what is there")

levels = collections.Counter()
problems = collections.Counter()
stamps = []
lines = 0
for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            lines += 1
            found = LEVEL.search(line)
            level = found.group(1) if found else "OTHER"
            level = {"WARNING": "WARN", "FATAL": "CRITICAL"}.get(level, level)
            levels[level] += 1
            stamp = TIMESTAMP.search(line)
            if stamp:
                stamps.append(stamp.group(0))
            if level in PROBLEMS:
                message = line[found.end():].strip(" :-\t\n]") if found else line.strip()
                for pattern, mask in MASKS:
                    message = pattern.sub(mask, message)
                problems[(level, message)] += 1

print(json.dumps({
    "files": ["file://" + p for p in files],
    "lines": lines,
    "levels": dict(levels.most_common()),
    "top_problems": [{"level": lvl, "message": msg, "count": n}
                     for (lvl, msg), n in problems.most_common(args.get("top", 5))],
    "first_timestamp": min(stamps) if stamps else None,
    "last_timestamp": max(stamps) if stamps else None,
}))
