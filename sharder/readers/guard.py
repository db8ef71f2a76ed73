"""Calling decoding libraries safely: quietly (privacy) and with every failure turned into an
:class:`~sharder.frames.InputRejected`.

Library exception messages often name the file or quote tag values (PIL, SimpleITK and FFmpeg
name the file, pydicom quotes element values), so they are never passed on: only fixed
sentences and exception class names are. Warnings and log records that the libraries emit while
we call them are dropped for the same reason (see :func:`quiet`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ..frames import InputRejected

_QUIET = threading.local()
_QUIET_LOGGERS = ("pydicom", "nibabel", "PIL", "libav", "av")


class _DropWhileQuiet(logging.Filter):
    """Drops every record of a third-party logger while this thread is inside :func:`quiet`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "depth", 0)


_DROP_FILTER = _DropWhileQuiet()
_filtered_count = -1


def _filter_library_loggers() -> None:
    """Attach the drop filter to every logger of the quietened libraries.  A logger's filters
    do not see records that propagate up from its children (pydicom logs decoder failures on
    ``pydicom.pixels.decoders.base``), so each (lazily created) child needs its own; the logger
    registry is rescanned only when it has grown."""
    global _filtered_count
    registry = logging.root.manager.loggerDict
    if len(registry) == _filtered_count:
        return
    names = [n for n in list(registry) if n.split(".")[0] in _QUIET_LOGGERS] + list(_QUIET_LOGGERS)
    for name in names:
        logger = logging.getLogger(name)
        if _DROP_FILTER not in logger.filters:
            logger.addFilter(_DROP_FILTER)
    _filtered_count = len(registry)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and log records around one library call.

    pydicom's warnings quote element values and file names ("... in file /x/y.dcm"), PIL's and
    nibabel's can carry paths; none of them may reach a log.  Used around calls only, never
    around a ``yield``, so the caller's own warnings are untouched between frames.
    """
    _filter_library_loggers()
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.depth -= 1


def undecodable(what: str) -> Callable[[Exception], InputRejected]:
    """Classifier for :func:`guard`: every failure is "undecodable", described by ``what``."""
    return lambda exc: InputRejected("undecodable", f"{what} ({type(exc).__name__}).")


@contextlib.contextmanager
def guard(classify: Callable[[Exception], InputRejected]) -> Iterator[None]:
    """Run library code quietly; any exception it raises becomes ``classify(exc)``.

    Decoders fail in many ways (OSError, ValueError, RuntimeError, struct.error, FFmpegError,
    ...) and every one of them means "this input is unusable", so they are caught broadly.
    Their messages are never passed on: they name files and quote tag values.
    """
    try:
        with quiet():
            yield
    except (InputRejected, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise classify(exc) from None


DONE = object()


def next_or_done(it: Iterator[Any], classify: Callable[[Exception], InputRejected]) -> Any:
    """``next(it)`` under :func:`guard`; returns ``DONE`` when the iterator is exhausted."""
    with guard(classify):
        return next(it, DONE)

