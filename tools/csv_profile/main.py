"""csv_profile: reads a workspace CSV with pandas and describes every column."""

import csv
import json
import math
import os
import sys

import pandas as pd

args = json.load(sys.stdin)
path = os.path.normpath(os.path.join("/workspace", args["path"]))
if not path.startswith("/workspace/"):
    sys.exit(f"{args['path']!r} is outside the workspace; give a path relative to it")
if not os.path.isfile(path):
    sys.exit(f"no file {args['path']!r} in the workspace; list_files shows what is there")

delimiter = args.get("delimiter")
if delimiter is None:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        sample = f.read(64 * 1024)
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","

try:
    frame = pd.read_csv(path, sep=delimiter)
except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    sys.exit(f"{args['path']!r} cannot be read as CSV: {e}")


def number(x):
    """A JSON-safe float (NaN and infinities become null)."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def kind(column):
    if pd.api.types.is_bool_dtype(column):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    if pd.api.types.is_float_dtype(column):
        present = column.dropna()
        return "integer" if len(present) and (present % 1 == 0).all() else "float"
    present = column.dropna().astype(str)
    if len(present):
        parsed = pd.to_datetime(present, errors="coerce", format="mixed")
        if parsed.notna().mean() > 0.9:
            return "datetime"
    return "text"


columns = []
for name in frame.columns:
    column = frame[name]
    described = {
        "name": str(name),
        "type": kind(column),
        "missing": int(column.isna().sum()),
        "distinct": int(column.nunique(dropna=True)),
    }
    present = column.dropna()
    if described["type"] in ("integer", "float") and len(present):
        described.update(min=number(present.min()), max=number(present.max()),
                         mean=number(present.mean()), std=number(present.std()) if len(present) > 1 else None)
    elif len(present):
        counts = present.astype(str).value_counts().head(args.get("top", 3))
        described["top"] = [{"value": value, "count": int(count)} for value, count in counts.items()]
    columns.append(described)

print(json.dumps({"path": args["path"], "rows": int(len(frame)), "columns": columns}))
