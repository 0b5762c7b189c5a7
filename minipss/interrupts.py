"""How a long command ends before its end, cleanly: Ctrl-C (SIGINT), a scheduler's SIGTERM, or a write the
disk refuses. Generic: it imports nothing else from minipss, so every floor may use it.

- `stop_cleanly(name, command)` wraps a whole command. SIGINT and SIGTERM raise `Stopped` (a
  KeyboardInterrupt, so no `except Exception` swallows it) in the main thread; the command unwinds (every
  file it writes is written whole or appended a line at a time, so what it saved stays valid), prints one
  line on stderr (what was saved, where, and the command that resumes) and exits 128 + the signal:
  130 for SIGINT, 143 for SIGTERM. A second signal while it unwinds is ignored.
- `saved(where, what)`: what the running command keeps if it is stopped now (`what` may be a function
  returning the text). The first declaration inside `stop_cleanly` is the one printed: the outer
  command's, not that of a step it runs.
- `writing(path)`: a write that fails (no space, read-only, quota, permission) becomes `WriteFailed`, an
  OSError naming the path and the cause, which the command line turns into exit code 2 without a traceback.
- `pause_point()`: called after each saved piece of work. Only when the environment variable
  `MINIPSS_PAUSE_AFTER_SAVE` names a file (tests do this) does it matter: at its first call the process
  writes its pid into that file and sleeps (at most 10 minutes) until a signal ends it, so a test stops it
  at a known point instead of racing it.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PAUSE_ENV = "MINIPSS_PAUSE_AFTER_SAVE"
SIGNALS = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM inside `stop_cleanly`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class WriteFailed(OSError):
    """A write the system refused, naming the path and the cause."""


_state = {"active": False, "saved": None}


def saved(where, what) -> None:
    """Declare what a stop now would leave, and where (the first declaration in a command is kept)."""
    if _state["active"] and _state["saved"] is None:
        _state["saved"] = (where, what)


def _raise(signum, frame):
    for s in SIGNALS:  # unwinding takes a moment: a second signal must not cut it short
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


def stop_line(name: str, command, signum: int) -> str:
    """The one line a stopped command prints: `name` (`minipss pss`), the signal, what was saved and where,
    and `command` (the words that run it again)."""
    command = shlex.join(map(str, command))
    program, name = name, SIGNALS.get(signum, f"signal {signum}")
    if _state["saved"] is None:
        return f"{program}: stopped by {name}; nothing was saved yet; to start again: {command}"
    where, what = _state["saved"]
    try:
        what = what() if callable(what) else what
    except Exception as e:  # describing the saved work must never hide the stop itself
        what = f"the work saved so far ({e!r} while describing it)"
    return f"{program}: stopped by {name}; saved in {where}: {what}; to resume: {command}"


@contextmanager
def stop_cleanly(name: str, command):
    """Run a command so that SIGINT and SIGTERM end it with one line and exit code 130 or 143."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in SIGNALS} if main else {}
    if main:
        for s in SIGNALS:
            signal.signal(s, _raise)
    _state.update(active=True, saved=None)
    try:
        yield
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(stop_line(name, command, signum), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        _state.update(active=False, saved=None)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def writing(path):
    """Turn a failed write of `path` (or of something under it) into `WriteFailed` naming it and the cause."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as e:
        if not (isinstance(e, OSError) or type(e).__name__ == "SafetensorError"):
            raise
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        where = getattr(e, "filename", None) or path
        raise WriteFailed(f"cannot write {where}: {cause}; the work saved before is kept: free space (or make the "
                          "place writable) and run the same command again") from None


_paused = []


def pause_point() -> None:
    """A saved piece of work is complete (see the module's docstring; does nothing unless a test asks)."""
    if _paused or not os.environ.get(PAUSE_ENV):
        return
    _paused.append(True)
    flag = Path(os.environ[PAUSE_ENV])
    flag.with_name(flag.name + ".tmp").write_text(str(os.getpid()))
    os.replace(flag.with_name(flag.name + ".tmp"), flag)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
