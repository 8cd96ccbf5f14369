"""Malformed-JSON messages, the same from every reader of JSON (input files, sample files).

Kept apart from :mod:`rcond.sources` so that a module that only reads JSON (:mod:`rcond.metrics`)
does not import the input readers and their scorers with it.
"""

from __future__ import annotations

import json


def json_error(e: json.JSONDecodeError) -> str:
    """What went wrong and where in the line: "Expecting ',' delimiter at column 45", and a note
    when the text ends inside the value (a line or file cut short)."""
    where = f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"
    if not e.doc[e.pos:].strip() or e.msg.startswith("Unterminated string"):
        where += ": the text ends before the JSON value does (cut short?)"
    return where
