"""One live run per output. Generic: it imports nothing else from minipss, so every floor may use it.

`hold(output)` takes `<output>.lock` beside the output (a file or a folder) for as long as the command
runs: an exclusive `fcntl.flock` on the open lock file, which the system releases when the process ends
however it ends (so nothing depends on two runs racing well, and a reused process id fools nothing). The
file holds the holder's process id, start time and command line, for the messages:

- a second process given an output a live run holds is refused at once (`Held`, a ValueError: exit code
  2), naming the holder's process id and since when;
- a lock file left by a run that ended without releasing it (killed, a power loss) is taken over, with a
  note naming that run;
- a run that ends, normally or stopped, removes the lock file (and the folders made for it alone, when
  nothing else was written there: a command refused before any work leaves nothing).

The same process may take a lock it already holds (a command whose steps lock the same output again).
Where `fcntl` does not exist, the file is created exclusively (`O_EXCL`) instead, and a lock file left by
a dead run must be removed by hand (the message says so).
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


class Held(ValueError):
    """Another live process holds the output."""


_held: dict[str, int] = {}  # lock path -> how many times this process holds it


def lock_path(output) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _describe(info: dict) -> str:
    return f"pid {info.get('pid', '?')}, since {info.get('since', '?')}"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while block := os.read(fd, 1 << 16):
        data += block
    try:
        info = json.loads(data.decode("utf-8"))
        return info if isinstance(info, dict) else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _refusal(output, path: Path, info: dict, option: str, hint: str = "") -> Held:
    return Held(f"{option} {output}: another run is writing it ({_describe(info)}; lock {path}); wait for it to "
                f"end, stop it, or choose another {option}{hint}")


def _open_locked(output, path: Path, option: str) -> int:
    """An open descriptor of `path` holding its flock; refuses a live holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = {}
            for _ in range(20):  # the holder writes its id just after taking the lock
                info = _read(fd)
                if info:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise _refusal(output, path, info, option) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as we opened it: take the new one


def _open_exclusive(output, path: Path, option: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY)
        info = _read(fd)
        os.close(fd)
        raise _refusal(output, path, info, option,
                       f" (if no run is alive, remove {path})") from None


@contextmanager
def hold(output, option: str = "--out"):
    """Hold `<output>.lock` while the block runs (see the module's docstring)."""
    path = lock_path(output)
    key = os.path.abspath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    made, parent = [], path.parent  # folders made for the lock alone are removed with it, when left empty
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = (_open_locked if fcntl is not None else _open_exclusive)(output, path, option)
        try:
            before = _read(fd)
            if before:
                print(f"note: {path}: the run that held {output} ({_describe(before)}) ended without releasing it; "
                      "this run takes over", file=sys.stderr, flush=True)
            info = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv}
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(info).encode())
            except OSError as e:  # a full disk, say: name the file
                raise OSError(e.errno, e.strerror, str(path)) from None
            _held[key] = 1
            try:
                yield path
            finally:
                del _held[key]
                path.unlink(missing_ok=True)  # still holding it: nobody takes a lock that is being removed
        finally:
            os.close(fd)
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: the command wrote there, or another run holds a lock there
                break
