r"""Running learner code: a time limit, bounded output capture, forbidden calls, one call at a time.

:func:`call_learner` runs ``fn(*args)`` on copies the caller made, with stdout/stderr captured into a
:class:`BoundedWriter`, under a SIGALRM time limit (:func:`time_limit`) and with the exercise's forbidden
functions refusing (a :class:`~quantlab.grading.forbid.Guard`). It never raises except KeyboardInterrupt:
it returns what happened as a :class:`Call`. This is *not* a security boundary — learner code runs with the
grader's user rights; run untrusted submissions as an unprivileged user or in a container.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from .forbid import ForbiddenCall, Guard

__all__ = ["GradingTimeout", "BoundedWriter", "time_limit", "describe_exc", "Call", "call_learner",
           "OUTPUT_LIMIT"]

#: How many characters of the learner's printing are kept per exercise.
OUTPUT_LIMIT = 2000


class GradingTimeout(BaseException):
    """Raised by the alarm inside learner code (a BaseException so ``except Exception`` can't eat it)."""


class BoundedWriter(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts (but drops) the rest."""

    def __init__(self, limit: int = OUTPUT_LIMIT):
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, s) -> int:
        s = str(s)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.parts)
        return text + (f"\n... [{self.dropped} more characters of output dropped]" if self.dropped else "")


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise GradingTimeout after ``seconds`` (SIGALRM; a no-op outside the main thread or on Windows)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _alarm(signum, frame):
        raise GradingTimeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def describe_exc(exc: BaseException) -> str:
    """'raised ValueError: boom (line 3)' — the line is the learner's last frame, not the library's."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) — a function must return its result, not exit"
    if isinstance(exc, KeyboardInterrupt):
        return "was interrupted (KeyboardInterrupt)"
    tb = traceback.extract_tb(exc.__traceback__)
    learner = [f for f in tb if "quantlab" not in f.filename.replace("\\", "/").split("/")[-3:-1]]
    where = f" (line {learner[-1].lineno})" if learner else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


@dataclass
class Call:
    """What one call of learner code did: its result, or the exception, a timeout, a forbidden call."""

    got: Any = None
    exc: BaseException | None = None
    timed_out: bool = False
    forbidden: str | None = None  # the message of the first forbidden call, if any


def call_learner(fn, args: tuple, out: BoundedWriter, seconds: float | None, guard: Guard | None) -> Call:
    """``fn(*args)`` with output into ``out``, under ``seconds`` and ``guard``; never raises (bar Ctrl-C)."""
    res = Call()
    if guard is not None:
        guard.violation = None
    try:
        with contextlib.ExitStack() as stack:
            if guard is not None:
                stack.enter_context(guard.active())
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
            with time_limit(seconds):
                res.got = fn(*args)
    except GradingTimeout:
        res.timed_out = True
    except ForbiddenCall as e:
        res.exc, res.forbidden = e, str(e)
    except BaseException as e:  # noqa: BLE001 - SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        res.exc = e
    if guard is not None and guard.violation is not None:
        res.forbidden = guard.violation
    return res
