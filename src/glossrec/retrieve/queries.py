"""Reading query texts per user: glossrec's generations.jsonl or the reference code's output.

Accepted formats:

- JSON lines, one ``{"user_id": str, "texts": [str, ...]}`` per user (what ``glossrec
  generate`` writes);
- the GLoSS reference code's output: a JSON array of ``{"reviewer_id": str,
  "generated_sequences": [str, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from glossrec.errors import DataError
from glossrec.io import iter_jsonl, open_text


def _texts(value: object, path: Path, line: int | None, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError("must be a list of strings", path, line, field)
    return [t.strip() for t in value]


def load_queries(path: str | Path) -> dict[str, list[str]]:
    """user id -> generated texts, in file order; duplicate users are an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError("queries file not found", path)
    with open_text(path) as f:
        head = f.read(1024).lstrip()
    out: dict[str, list[str]] = {}
    if head.startswith("["):
        try:
            with open_text(path) as f:
                rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path, e.lineno) from None
        for i, row in enumerate(rows):
            where = f"reviewer_id (array element {i})"
            if not isinstance(row, dict) or not isinstance(row.get("reviewer_id"), str):
                raise DataError("each element needs a string reviewer_id", path, None, where)
            uid = row["reviewer_id"]
            if uid in out:
                raise DataError(f"duplicate user {uid!r}", path, None, where)
            out[uid] = _texts(row.get("generated_sequences"), path, None,
                              f"generated_sequences (array element {i})")
        return out
    for line, obj in iter_jsonl(path):
        uid = obj.get("user_id")
        if not isinstance(uid, str) or not uid:
            raise DataError("missing or not a string", path, line, "user_id")
        if uid in out:
            raise DataError(f"duplicate user {uid!r}", path, line, "user_id")
        out[uid] = _texts(obj.get("texts"), path, line, "texts")
    if not out:
        raise DataError("no users (empty file)", path)
    return out
