"""Exceptions that keep torch's error types while reading as plain Python ones.

torch raises ``AssertionError`` for mismatched shapes and ``RuntimeError`` for
norm orders it cannot compute. jaxprune raises these subclasses, so code
written against torch (``except AssertionError``) and ordinary Python code
(``except ValueError``) both catch them.
"""

from __future__ import annotations


class PruningShapeError(ValueError, AssertionError):
    """An ``importance_scores``, ``default_mask`` or custom mask of the wrong shape."""


class NormOrderError(ValueError, RuntimeError):
    """An ``n`` that ``ln_structured`` cannot use for this tensor."""


class KeyRequiredError(TypeError, ValueError):
    """A random method was given no PRNG key (``None`` is not a key: a
    ``TypeError``; a rule set that needs one: a ``ValueError``)."""
