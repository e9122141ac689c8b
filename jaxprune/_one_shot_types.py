"""What one-shot pruning returns: the pruned parameters, the masks, and a report per layer.

Shared by :func:`jaxprune.one_shot` (Flax trees and NNX modules) and
``jaxprune.interop.one_shot`` (torch modules), so both report alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ._amounts import count_int, count_true
from ._typing import Array

_logger = logging.getLogger("jaxprune")


class LayerReport(NamedTuple):
    """How one kernel was pruned.

    Attributes:
      path: the parameter's path (``jp.path_str``) or torch name.
      method: the spec that pruned it (``jp.Wanda(0.5)``...).
      stage: the calibration pass its inputs came from (0 = the first); with
        ``sequential=True`` a kernel's inputs come from a model whose kernels
        of earlier stages are already pruned.
      sparsity: the fraction of its entries pruned.
      error: the relative reconstruction error ``||W X - W' X|| / ||W X||``
        on its calibration inputs (NaN where no inputs were captured: a
        magnitude rule on a parameter that is not a matmul weight).
    """

    path: str
    method: Any
    stage: int
    sparsity: float
    error: float


class OneShotResult(tuple):
    """``(new_params, masks)``, with the per-layer reports in :attr:`layers`.

    Unpacks as a pair: ``new_params, masks = jp.one_shot(...)``.

    >>> r = OneShotResult({"w": 1.0}, {"w": None}, [LayerReport("w", None, 0, 0.5, 0.1)])
    >>> new_params, masks = r
    >>> r.layers[0].sparsity, len(r)
    (0.5, 2)
    """

    layers: tuple[LayerReport, ...]

    def __new__(cls, params: Any, masks: Any, layers: Iterable[LayerReport]) -> OneShotResult:
        self = super().__new__(cls, (params, masks))
        self.layers = tuple(layers)
        return self

    @property
    def params(self) -> Any:
        """The pruned parameters (the first element)."""
        return self[0]

    @property
    def masks(self) -> Any:
        """The keep-masks (the second element; None where a leaf was not pruned)."""
        return self[1]

    def table(self) -> str:
        """The reports as a Markdown table (path, method, stage, sparsity, error).

        >>> print(OneShotResult(None, None, [LayerReport("w", "Wanda(0.5)", 0, 0.5, 0.125)]).table())
        | layer | method | stage | sparsity | rel. error |
        |---|---|---|---|---|
        | w | Wanda(0.5) | 0 | 50.00% | 0.1250 |
        """
        rows = ["| layer | method | stage | sparsity | rel. error |", "|---|---|---|---|---|"]
        rows += [f"| {r.path} | {r.method} | {r.stage} | {r.sparsity:.2%} | {r.error:.4f} |" for r in self.layers]
        return "\n".join(rows)


def pruned_fraction(mask: Array) -> float:
    """The fraction of a keep-mask's entries that are False, from exact counts.

    Both counts are Python ints (:func:`count_true`: exact beyond 2**32
    entries) and the result is their one correctly rounded quotient, so it is
    the float nearest the true fraction at any size (a float32 mean is not:
    its sum stops counting at 2**24). An empty mask prunes nothing: 0.0.

    >>> import jax.numpy as jnp
    >>> pruned_fraction(jnp.array([True, False, False])) == 2 / 3
    True
    """
    total = math.prod(mask.shape)
    if total == 0:
        return 0.0
    return (total - count_int(count_true(mask))) / total


def reporter(progress: bool | Callable[[Any], None] | None, log: Callable[[Any], None] | None = None,
             what: str = "one_shot", item: str = "LayerReport") -> Callable[[Any], None]:
    """What a ``progress=`` argument means: True logs each report with ``log``
    (default :func:`log_report`: logger ``"jaxprune"``, INFO), a callable receives
    each, None/False nothing; errors name the function ``what`` and the ``item`` reported."""
    if progress is True:
        return log_report if log is None else log
    if progress is None or progress is False:
        return lambda _: None
    if callable(progress):
        return progress
    raise TypeError(f"{what}: progress must be None, a bool or a callable receiving each {item}, "
                    f"got {progress!r}")


def log_report(layer: LayerReport) -> None:
    """One INFO line on the ``jaxprune`` logger for a pruned kernel."""
    _logger.info("one_shot: %s (%r, stage %d): %.2f%% pruned, relative error %.4f", layer.path, layer.method,
                 layer.stage, 100 * layer.sparsity, layer.error)
