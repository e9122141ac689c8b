"""``jaxprune demo``: the digits examples of :mod:`jaxprune.demo`, with their dependencies checked."""

from __future__ import annotations

import argparse
import os

from ._errors import CliError


def run(args: argparse.Namespace) -> None:
    """Check the extra, ``--steps`` and ``--plot`` before any work, then run the demo (``--channels``: the second)."""
    try:
        from .. import demo

        demo.require()
    except ImportError as err:
        missing = f" ({err.name} is missing)" if getattr(err, "name", None) else ""
        raise CliError(f"the demo needs flax, optax, scikit-learn and matplotlib{missing}: "
                       "pip install 'jaxprune[examples]'") from None
    if args.channels:
        run_channels(args)
        return
    steps = 2000 if args.steps is None else args.steps
    plot = "jaxprune_demo.png" if args.plot is None else args.plot
    try:
        demo.make_schedule(steps)
    except ValueError as err:
        raise CliError(f"--steps: {err}") from None
    plot_folder = os.path.dirname(os.path.abspath(plot))
    if not os.path.isdir(plot_folder):
        raise CliError(f"--plot folder {os.path.dirname(plot)!r} does not exist (for {plot!r})")
    demo.run(seed=args.seed, steps=steps, plot_path=plot)


def run_channels(args: argparse.Namespace) -> None:
    """``--channels``: check ``--steps`` (``--plot`` has no meaning there), then run the channel demo."""
    from .. import demo

    if args.plot is not None:
        raise CliError(f"--plot {args.plot!r}: the --channels demo writes no plot")
    steps = demo.CHANNEL_STEPS if args.steps is None else args.steps
    try:
        demo.make_schedule(steps, demo.CHANNEL_SPARSITY)
    except ValueError as err:
        raise CliError(f"--steps: {err}") from None
    demo.run_channels(seed=args.seed, steps=steps)
