"""Child processes of the suite: start a worker script, SIGKILL it, or stop it with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Proc:
    """A worker script of this directory running under the suite's Python, output to a log file."""

    def __init__(self, name: str, script: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, str(HERE / script), "--name", name, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit status."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def wait(self, timeout: float) -> int:
        """Wait for a worker that ends by itself; SIGKILL it after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def tail(self, lines: int = 5) -> str:
        """The last lines of its log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
