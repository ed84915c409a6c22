"""``--image_file_pattern``: one or more globs, with shell-style brace lists (``'*.{jpg,png}'``).

Python's ``glob`` has no brace expansion, so a pattern that works unquoted in a shell matched nothing once
quoted. The files of all patterns are pooled, de-duplicated and sorted together: the order that
``spinenet image2bin`` numbers them in, and that ``spinenet report`` must reproduce without a manifest.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Sequence


def _split_top_level(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    return parts + [body[start:]]


def expand_braces(pattern: str) -> list[str]:
    """``'a/*.{jpg,png}'`` -> ``['a/*.jpg', 'a/*.png']``, nested lists included, as bash does; braces without a
    top-level comma (``'{x}'``, ``'{}'``) stay literal."""
    depth, start = 0, 0
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                parts = _split_top_level(pattern[start + 1:i])
                if len(parts) > 1:
                    head, tail = pattern[:start], pattern[i + 1:]
                    return [p for part in parts for p in expand_braces(head + part + tail)]
    return [pattern]


def match_files(patterns: str | Sequence[str]) -> list[str]:
    """The files (not folders) matching any of ``patterns`` (``~`` and brace lists expanded), sorted, each once."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found = {path for pattern in patterns for expanded in expand_braces(os.path.expanduser(pattern))
             for path in _glob.glob(expanded) if os.path.isfile(path)}
    return sorted(found)


def describe(patterns: str | Sequence[str]) -> str:
    """The patterns as a user typed them, for messages: ``'a/*.jpg' 'b/*.png'``."""
    return " ".join(repr(p) for p in ([patterns] if isinstance(patterns, str) else patterns))
