"""text_stats: counts of a text given inline or as a workspace file."""

import collections
import json
import os
import re
import sys

STOP_WORDS = set(
    "a an and are as at be but by for from has have he her his i in is it its of on or our she so "
    "that the their them they this to was we were what when which who will with you your not no "
    "do does did been being if then than there these those into over also can could would should".split()
)

args = json.load(sys.stdin)
if ("text" in args) == ("path" in args):
    sys.exit("give exactly one of text or path")
if "path" in args:
    path = os.path.normpath(os.path.join("/workspace", args["path"]))
    if not path.startswith("/workspace/"):
        sys.exit(f"{args['path']!r} is outside the workspace; give a path relative to it")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        sys.exit(f"no file {args['path']!r} in the workspace; list_files shows what is there")
    except UnicodeDecodeError:
        sys.exit(f"{args['path']!r} is not UTF-8 text")
else:
    text = args["text"]

words = re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text)
lowered = [w.lower() for w in words]
counts = collections.Counter(w for w in lowered if w not in STOP_WORDS)
sentences = [s for s in re.split(r"[.!?]+(?:\s|$)", text) if s.strip()]
print(json.dumps({
    "characters": len(text),
    "words": len(words),
    "lines": len(text.splitlines()),
    "sentences": len(sentences),
    "distinct_words": len(set(lowered)),
    "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else None,
    "top_words": [{"word": w, "count": c} for w, c in counts.most_common(args.get("top", 10))],
}))
