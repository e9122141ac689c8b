"""The ``jaxprune`` command: prune checkpoints from the shell, report sparsity, run the demo.

``jaxprune --help`` and ``jaxprune COMMAND --help`` describe it; the README's
"Command line" section shows it at work. Modules: :mod:`._spec` (the rule
grammar, one method table), :mod:`._checkpoints` (file formats),
:mod:`._prune`, :mod:`._report`, :mod:`._demo` (the commands), :mod:`._main`
(parser and :func:`main`), :mod:`._text` (tables).

>>> import os, tempfile, numpy as np
>>> from jaxprune.cli import main, write_checkpoint
>>> folder = tempfile.mkdtemp()
>>> write_checkpoint(os.path.join(folder, "in.safetensors"),
...                  {"fc.weight": np.array([[0.5, -2.0], [0.1, 3.0]], np.float32), "fc.bias": np.ones(2, np.float32)})
>>> main(["prune", os.path.join(folder, "in.safetensors"), "-o", os.path.join(folder, "out.safetensors"),
...       "--rule", "*.weight=l1:0.5"])  # doctest: +ELLIPSIS
tensor     shape   dtype    method  pruned units  sparsity
fc.bias    (2,)    float32  -       -                0.00%
fc.weight  (2, 2)  float32  l1:0.5  2/4 entries     50.00%
total                               2/6 entries     33.33%
wrote .../out.safetensors (pruned weights, 2 tensors)
0
"""

from ._checkpoints import Checkpoint as Checkpoint
from ._checkpoints import read_checkpoint as read_checkpoint
from ._checkpoints import write_checkpoint as write_checkpoint
from ._errors import CliError as CliError
from ._main import PROG as PROG
from ._main import build_parser as build_parser
from ._main import main as main
from ._prune import MAX_SEED as MAX_SEED
from ._prune import PROGRESS_MIN_TENSORS as PROGRESS_MIN_TENSORS
from ._spec import METHODS as METHODS
from ._spec import Rule as Rule
from ._spec import Spec as Spec
from ._spec import grammar as grammar
from ._spec import parse_amount as parse_amount
from ._spec import parse_rule as parse_rule
from ._spec import parse_spec as parse_spec

__all__ = ("CliError", "main", "parse_spec", "read_checkpoint", "write_checkpoint")
