"""What a channel group is: the data that `channel_groups` returns and `shrink` reads.

A *channel group* is a set of channels (filters, hidden units, heads, ...) whose
positions appear along axes of several parameters at once: removing channel ``c``
means removing, from every member, the positions ``member.positions[c]`` along
``member.axis``. The analysis that finds groups lives in ``_groups.py``; the
functions that score, mask and shrink them in ``_shrink.py``. Both only agree on
the types below.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One parameter axis indexed by a group's channels.

    Attributes:
      path: the leaf's path, as ``jp.path_str`` writes it.
      axis: the axis of that leaf (non-negative).
      length: the axis's size in the leaf.
      positions: int64 array of shape ``(group.size, per_channel)``: the
        positions along ``axis`` that channel ``c`` owns. One position per
        channel when the axis *is* the channel axis (``kind`` ``"one-to-one"``)
        or a sub-range of it after a concatenation (``"range"``); several when
        channels were merged with another axis, by a flatten or a head reshape
        (``"spread"``). Positions of different channels never overlap.

    >>> m = Member("dense.kernel", 1, 4, np.arange(4).reshape(4, 1))
    >>> m.kind
    'one-to-one'
    """

    path: str
    axis: int
    length: int
    positions: np.ndarray

    def __post_init__(self) -> None:
        positions = np.array(self.positions, dtype=np.int64, copy=True)
        if positions.ndim != 2:
            raise ValueError(f"Member positions must have shape (size, per_channel), got {positions.shape}")
        positions.setflags(write=False)
        object.__setattr__(self, "positions", positions)

    @property
    def kind(self) -> str:
        """``"one-to-one"``, ``"range"`` or ``"spread"`` (see the class docstring)."""
        size, per_channel = self.positions.shape
        if per_channel > 1:
            return "spread"
        if size == self.length and bool(np.all(self.positions[:, 0] == np.arange(size))):
            return "one-to-one"
        return "range"

    def __repr__(self) -> str:
        return f"Member({self.path!r}, axis={self.axis}, {self.kind}, {self.positions.shape[1]} per channel)"


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels removed together from every member.

    Attributes:
      size: the number of channels.
      members: every parameter axis indexed by these channels, in tree order.
      exact: True when removing channels computes the same function as masking
        them (zeroing their positions in every member).
      reasons: why the group is not exact (empty when it is).
      signature: a fingerprint of the tree the group was read from (paths,
        shapes and dtypes of every leaf); ``shrink`` refuses another tree.

    >>> g = ChannelGroup(2, (Member("w", 0, 2, [[0], [1]]),), True, (), "t")
    >>> g.size, g.paths
    (2, ('w',))
    """

    size: int
    members: tuple[Member, ...]
    exact: bool
    reasons: tuple[str, ...]
    signature: str

    @property
    def paths(self) -> tuple[str, ...]:
        """The members' paths, each once, in order."""
        return tuple(dict.fromkeys(m.path for m in self.members))

    def __repr__(self) -> str:
        members = ", ".join(f"{m.path}[{m.axis}]" for m in self.members)
        flag = "" if self.exact else ", exact=False"
        return f"ChannelGroup(size={self.size}, members=[{members}]{flag})"


@dataclasses.dataclass(frozen=True, eq=False)
class DroppedGroup:
    """A set of coupled channels that cannot be removed, and why.

    Attributes:
      size: the number of channels.
      members: the parameter axes they index.
      reason: why (the channels reach the function's inputs or outputs, a
        constant array, an operation the analysis does not know, ...).
    """

    size: int
    members: tuple[Member, ...]
    reason: str


class ChannelGroups(tuple):  # type: ignore[type-arg]
    """A tuple of `ChannelGroup`, with ``.dropped``: the coupled channels left out and why."""

    dropped: tuple[DroppedGroup, ...]

    def __new__(cls, groups: Iterable[ChannelGroup], dropped: Iterable[DroppedGroup] = ()) -> ChannelGroups:
        self = super().__new__(cls, tuple(groups))
        self.dropped = tuple(dropped)
        return self


def tree_signature(leaves: Iterable[tuple[str, tuple[int, ...], str]]) -> str:
    """A short fingerprint of ``(path, shape, dtype)`` triples.

    >>> tree_signature([("w", (2, 3), "float32")]) == tree_signature([("w", (2, 3), "float32")])
    True
    """
    digest = hashlib.sha256()
    for path, shape, dtype in leaves:
        digest.update(f"{path}|{tuple(shape)}|{dtype};".encode())
    return digest.hexdigest()[:16]


def signature_of(tree: object) -> str:
    """`tree_signature` of a parameter tree (an NNX state too: paths as ``jp.path_str`` writes them).

    >>> import jax.numpy as jnp
    >>> signature_of({"w": jnp.zeros((2, 3))}) == signature_of({"w": jnp.ones((2, 3))})
    True
    """
    import jax

    from ._trees import path_str

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return tree_signature(
        (path_str(p), tuple(np.shape(x)), str(getattr(x, "dtype", type(x).__name__))) for p, x in leaves
    )
