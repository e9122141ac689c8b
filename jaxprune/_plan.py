"""The planner: rules -> which method prunes which leaf -> masks.

This is the internal home of what ``prune_tree``, ``jp.pruning``, the torch
bridge and the command line share; names without an underscore here may be
imported by those modules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def match_patterns(
    names: Sequence[str],
    rules: Mapping[str, Any],
    *,
    eligible: Callable[[int, str], bool] | None = None,
) -> list[tuple[int, str, Any]]:
    """``(index, pattern, value)`` for each name that a pattern matches (the
    first matching pattern in ``rules``' order wins).

    ``eligible(index, pattern)``, when given, must also hold for a pattern to
    match the name at ``index`` (the command line's ``ndim`` qualifiers).

    Raises ``ValueError`` for a pattern that matches no name, or whose every
    match an earlier pattern already took (it could never apply).

    >>> match_patterns(["a.kernel", "a.bias", "b.kernel"], {"a.*": 1, "*.kernel": 2})
    [(0, 'a.*', 1), (1, 'a.*', 1), (2, '*.kernel', 2)]
    """
    for pattern in rules:
        if not isinstance(pattern, str):
            raise TypeError(f"rule patterns must be strings, got {pattern!r}")
    chosen, won, matched = [], set(), set()
    for index, name in enumerate(names):
        hits = [p for p in rules if fnmatch.fnmatchcase(name, p) and (eligible is None or eligible(index, p))]
        matched.update(hits)
        if hits:
            won.add(hits[0])
            chosen.append((index, hits[0], rules[hits[0]]))
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    for pattern in rules:
        if pattern not in matched:
            raise ValueError(f"rule pattern {pattern!r} matches no parameter; the paths are: {shown or '(none)'}")
        if pattern not in won:
            raise ValueError(f"rule pattern {pattern!r} never applies: every parameter it matches is taken by "
                             "an earlier pattern (the first matching pattern wins); reorder the rules")
    return chosen
