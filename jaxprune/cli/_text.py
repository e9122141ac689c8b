"""What the command prints: tables in natural name order, names escaped, a progress bar."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

_DIGITS = re.compile(r"([0-9]+)", re.ASCII)
_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def escape(text: Any) -> str:
    """``text`` with every non-printable character as a Python escape: a tensor name
    holding ``\\x1b[2J`` must not clear the user's screen.

    >>> print(escape("bad\\x1b[2Jname\\n"))
    bad\\x1b[2Jname\\n
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key for display: digit runs compare as numbers (``features.3`` before ``features.10``).

    >>> sorted(["features.10.weight", "features.3.weight", "fc.weight"], key=natural_key)
    ['fc.weight', 'features.3.weight', 'features.10.weight']
    """
    parts = _DIGITS.split(name)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def first_line(text: str) -> str:
    """The first non-empty line of a message, without terminal colours."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return _COLOR.sub("", lines[0]) if lines else ""


def fmt_shape(shape: Sequence[int]) -> str:
    return str(tuple(int(d) for d in shape))


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Iterable[int] = ()) -> None:
    """Columns padded to their widest cell (``right``: right-aligned columns), every cell escaped."""
    right = set(right)
    cells = [[escape(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


class Progress:
    """A one-line progress bar on a terminal (``\\r`` updates); silent otherwise."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total, self.stream, self.enabled, self.width = total, stream, enabled, 0

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        filled = 24 * done // max(self.total, 1)
        line = f"pruning [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} {escape(label)[:48]}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
