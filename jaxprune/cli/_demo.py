"""``jaxprune demo``: the digits example of :mod:`jaxprune.demo`, with its dependencies checked."""

from __future__ import annotations

import argparse
import os

from ._errors import CliError


def run(args: argparse.Namespace) -> None:
    """Check the extra, ``--steps`` and ``--plot`` before any work, then run the demo."""
    try:
        from .. import demo

        demo.require()
    except ImportError as err:
        missing = f" ({err.name} is missing)" if getattr(err, "name", None) else ""
        raise CliError(f"the demo needs flax, optax, scikit-learn and matplotlib{missing}: "
                       "pip install 'jaxprune[examples]'") from None
    try:
        demo.make_schedule(args.steps)
    except ValueError as err:
        raise CliError(f"--steps: {err}") from None
    plot_folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(plot_folder):
        raise CliError(f"--plot folder {os.path.dirname(args.plot)!r} does not exist (for {args.plot!r})")
    demo.run(seed=args.seed, steps=args.steps, plot_path=args.plot)
