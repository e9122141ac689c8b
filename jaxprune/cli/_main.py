"""The argument parser and :func:`main`: errors become one line and exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

import jaxprune as jp

from .._files import Terminated, die_by
from . import _demo, _prune, _report
from ._errors import CliError
from ._prune import MAX_SEED
from ._spec import grammar
from ._text import escape

PROG = "jaxprune"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 (through :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _add_prune(sub: Any) -> None:  # argparse._SubParsersAction, a private name
    p = sub.add_parser(
        "prune", help="prune a .safetensors or torch .pt checkpoint by rules",
        description="Prune the tensors of a checkpoint by rules, reproducibly.\n\n" + grammar(),
        epilog="example: jaxprune prune model.pt -o pruned.safetensors --rule '*.weight=l1:0.5'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="checkpoint: .safetensors, .npz, or a torch state_dict .pt/.pth/.bin")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where to write the result: .safetensors or .pt/.pth/.bin (may be IN: written atomically)")
    p.add_argument("--rule", metavar="PATTERN=SPEC", action="append", required=True,
                   help="glob over tensor names = method spec, e.g. '*.weight[ndim=4]=ln-structured:0.3:n=2:dim=0'; "
                   "repeatable, the first matching rule wins")
    p.add_argument("--global", dest="global_amount", metavar="AMOUNT",
                   help="rank all matched tensors together (torch's global_unstructured); rules are then "
                   "'l1' or 'random' without an amount")
    p.add_argument("--seed", type=int, metavar="N",
                   help=f"PRNG seed, needed when a rule is random: jax.random.key(N), 0 <= N <= {MAX_SEED}")
    p.add_argument("--masks", metavar="MASKS", help="also write the bool masks there (.safetensors or .pt)")
    p.add_argument("--torch-reparam", action="store_true",
                   help="write *_orig/*_mask pairs (torch's pruning state_dict) instead of pruned weights")
    _add_key(p)
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")


def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", metavar="NAME", help="read the state_dict at NAME inside a wrapped torch checkpoint "
                   "(dotted for nesting: 'model', 'state_dict'); a .pt OUT is the whole checkpoint with that "
                   "state_dict replaced, a .safetensors OUT the state_dict alone")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxprune`` command."""
    parser = _Parser(prog=PROG, description="Prune checkpoints with jaxprune (torch.nn.utils.prune in JAX), "
                     "report their sparsity, or run the demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {jp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_prune(sub)

    r = sub.add_parser("report", help="the sparsity of any checkpoint, pruned or not",
                       description="Zeros per tensor and all-zero slices along each dim. Pairs *_orig/*_mask "
                       "are reported as their effective weight orig*mask.")
    r.add_argument("file", metavar="FILE", help="checkpoint: .safetensors, .npz or .pt/.pth/.bin")
    _add_key(r)
    r.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    r.add_argument("--nm", metavar="N:M[:axis=A]", help="also check N:M sparsity along axis A (default 1, torch's "
                   "matmul input axis) of every tensor with that axis: '2:4 along axis 1: valid'")
    r.add_argument("--block", metavar="BxB", help="also count the all-zero blocks of that shape in every tensor "
                   "with as many dims")

    d = sub.add_parser("demo", help="gradual pruning of a CNN on scikit-learn's digits: table and plot",
                       description="Train a small Flax CNN on scikit-learn's digits dense and with jp.pruning "
                       "(L1, polynomial schedule to 90%), print accuracy against sparsity, write the plot. "
                       "Needs pip install 'jaxprune[examples]'.")
    d.add_argument("--seed", type=int, default=0, help="model init, batch order and pruning key (default 0)")
    d.add_argument("--steps", type=int, default=None, help="training steps of each run (default 2000; 1000 "
                   "with --channels)")
    d.add_argument("--plot", default=None, help="where to write the PNG plot (default jaxprune_demo.png)")
    d.add_argument("--channels", action="store_true", help="the second demo: prune whole channels of a wider CNN "
                   "while it trains (75%% of every channel group), shrink it, and print params, FLOPs, inference "
                   "time and accuracy of the dense, shrunk and small-from-scratch models (no plot)")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "demo":
        _demo.run(args)
        return
    run, show = (_prune.run, _prune.show) if args.command == "prune" else (_report.run, _report.show)
    doc = run(args)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        show(doc)
    sys.stdout.flush()  # a closed pipe shows here, inside main, not at exit


def main(argv: list[str] | None = None) -> int:
    """Run the ``jaxprune`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    >>> main(["prune", "in.safetensors", "-o", "out.safetensors", "--rule", "w=magic:0.5"])
    2
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # --help, --version
            return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
        _dispatch(args)
    except (CliError, _UsageError) as err:
        return _fail(str(err))
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as err:
        where = f" {err.filename!r}" if err.filename else ""
        return _fail(f"cannot write{where}: {err.strerror or err}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Terminated as err:  # the outputs' temporary files are gone: end as the signal would have
        die_by(err.signum)
        raise
    return 0


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as Unix tools do (status 141 = 128 + SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again
    os.close(devnull)
    return 141


def _fail(message: str) -> int:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    print(f"{PROG}: error: {escape(' '.join(message.split()))}", file=sys.stderr)
    return 2
