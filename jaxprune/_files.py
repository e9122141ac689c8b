"""Files, safely: open only regular files for reading, and write atomically.

:func:`atomic_outputs` is the one writer of the package (``save_tree`` and
the command line): each output goes to a hidden temporary file in its
target's folder (``.NAME.jaxprune-PID-XXXX.tmp``), is flushed and fsynced,
and all are renamed into place only when every one is complete; on any
failure they are removed. Temporary files that a killed run left behind
(their PID no longer runs) are removed when the same target is written again.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> with atomic_outputs() as add:
...     add(os.path.join(folder, "a.bin"), lambda f: f.write(b"one"))
>>> os.listdir(folder), open(os.path.join(folder, "a.bin"), "rb").read()
(['a.bin'], b'one')
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

_HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_BLOCKED_SIGNALS = (signal.SIGINT, *_HANDLED_SIGNALS)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while outputs were written (raised so that cleanup runs).

    A BaseException, as KeyboardInterrupt: ``except Exception`` must not swallow it.
    Whoever catches it should end the process by the same signal (:func:`die_by`).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def die_by(signum: int) -> None:
    """End this process by ``signum`` with its default action, as if never caught."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file; raise ``OSError`` otherwise.

    A FIFO would block forever and ``/dev/zero`` (even behind a symlink) never
    ends: both are refused, before opening and again on the opened file
    (non-blocking, so a FIFO swapped in between cannot hang the open).
    """
    path = os.fspath(path)
    _check_regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "it is a directory", path)
    if not stat.S_ISREG(mode):
        raise OSError(22, "not a regular file (a FIFO, device or socket)", path)


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.jaxprune-"


def _temp_pattern(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(_temp_prefix(path)) + r"([0-9]+)-[A-Za-z0-9_]+\.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files of earlier runs killed while writing ``path``; return their names.

    Only files that are unmistakably ours: named ``.NAME.jaxprune-PID-XXXX.tmp``
    after this target, owned by this user, regular, and whose PID runs no more.
    """
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _temp_pattern(path)
    removed = []
    for entry in os.scandir(folder):
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _running(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                os.remove(entry.path)
                removed.append(entry.name)
    return removed


@contextlib.contextmanager
def _signals_raise(enabled: bool) -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` (so ``finally`` blocks run)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in _HANDLED_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def _signals_blocked(enabled: bool) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back (delivered on exit): the renames are not cut in half."""
    if not enabled or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_outputs(*, handle_signals: bool = False) -> Iterator[Callable[[str, Callable[[IO[bytes]], Any]], None]]:
    """Yield ``add(path, write)``: ``write(f)`` fills a temporary file beside ``path``.

    When the block ends without an error, every temporary file is renamed
    onto its path; otherwise all are removed. ``handle_signals=True`` (the
    command line) makes SIGTERM and SIGHUP raise :class:`Terminated` inside
    the block, so they clean up as Ctrl-C does; a library caller keeps its
    own signal handlers.
    """
    pending: list[tuple[str, str]] = []

    def add(path: str, write: Callable[[IO[bytes]], Any]) -> None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=folder)
        pending.append((tmp, path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0o600; give the file the usual permissions

    try:
        with _signals_raise(handle_signals):
            yield add
            with _signals_blocked(handle_signals):
                for tmp, path in pending:
                    os.replace(tmp, path)
                _fsync_folders({os.path.dirname(os.path.abspath(path)) for _, path in pending})
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write one file atomically: ``write(f)`` fills a temporary file renamed onto ``path``."""
    with atomic_outputs() as add:
        add(os.fspath(path), write)


def _fsync_folders(folders: set[str]) -> None:
    """Make the renames durable (where the platform can open a folder)."""
    for folder in sorted(folders):
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
