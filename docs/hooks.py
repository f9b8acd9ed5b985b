"""MkDocs hook: the schedule reference page is generated from iterprune/schedule/keys.py,
so it cannot drift from the validator (tests/schedule/test_reference.py checks the table)."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- schedule-reference -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from iterprune.schedule import reference

    return markdown.replace(MARKER, reference.markdown())
