"""Reading the report's markdown in tests: tables padded by pandas' to_markdown, compared with single spaces."""

from __future__ import annotations

import re


def squash(md: str) -> str:
    """``md`` with each table row's padding collapsed: '| a    | b |' -> '| a | b |', '|:---|' -> '|---|'."""
    lines = []
    for line in md.splitlines():
        if line.startswith("|"):
            line = re.sub(r" {2,}", " ", line)
            line = re.sub(r"\|:?-+:?(?=\|)", "|---", line)
        lines.append(line)
    return "\n".join(lines) + ("\n" if md.endswith("\n") else "")
