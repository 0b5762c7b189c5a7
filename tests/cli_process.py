"""Run `python -m minipss` as a separate process, and kill one mid-run, to test what a real interruption
leaves behind and how the next run resumes from it."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict:
    """This checkout's minipss first on the path; one thread, so every process computes alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def command(*args) -> list[str]:
    return [sys.executable, "-m", "minipss", *map(str, args)]


def run_minipss(*args, timeout: float = 300) -> str:
    """`minipss *args` to its end; fails the test on a non-zero exit code; returns what it wrote on stderr."""
    done = subprocess.run(command(*args), env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def kill_when(ready, *args, timeout: float = 300) -> None:
    """Start `minipss *args` and kill it (SIGKILL on POSIX) as soon as `ready()` is true; fails the test
    when the process ends on its own first, so a passing test always had a real interruption."""
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command(*args), env=cli_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if process.poll() is not None:
                    err.seek(0)
                    raise AssertionError(f"minipss {args[0]} ended (exit code {process.returncode}) before "
                                         f"it could be killed; give it more work\n{err.read()[-3000:]!r}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"minipss {args[0]}: no progress to wait for after {timeout}s")
                time.sleep(0.002)
            process.kill()
        finally:
            process.kill()
            process.wait()
    assert process.returncode != 0, "the process finished before the kill reached it"


def line_count(path: Path) -> int:
    """Finished lines in a file another process is appending to (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


PAUSE_ENV = "MINIPSS_PAUSE_AFTER_SAVE"  # minipss.interrupts.pause_point: pause after the first saved piece


class Paused:
    """A command started in a process group of its own with default signal handling, now paused right after
    its first saved piece of work (`minipss.interrupts.pause_point`), so a test stops it at a known point."""

    def __init__(self, cmd: list, flag: Path, timeout: float = 300):
        flag.unlink(missing_ok=True)
        self.err = tempfile.TemporaryFile()
        self.process = subprocess.Popen(cmd, env={**cli_env(), PAUSE_ENV: str(flag)}, stdout=subprocess.DEVNULL,
                                        stderr=self.err, start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while not flag.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"{cmd[2:4]} ended (exit code {self.process.returncode}) before saving any "
                                     f"work; give it more work\n{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"{cmd[2:4]}: nothing saved after {timeout}s")
            time.sleep(0.01)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", errors="replace")

    def stop(self, sig: int, timeout: float = 60) -> tuple[int, str]:
        """Send `sig` to the process group (as a terminal's Ctrl-C or a scheduler does); (exit code, stderr)."""
        os.killpg(self.pid, sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, 9)
            self.process.wait()
            raise AssertionError(f"no exit within {timeout}s of signal {sig}\n{self.stderr()[-3000:]}")
        text = self.stderr()
        self.err.close()
        return code, text
