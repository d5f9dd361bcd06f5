"""The console: our progress lines, our table and our warnings on the terminal; what libraries print goes to the
run's log file (``results/<RUN>/log.txt``), and to the terminal too with ``-v``.

While a ``Console`` is active, ``sys.stdout`` and ``sys.stderr`` are routers. Whatever anyone writes there — logging
handlers, ``warnings``, ``print``, progress bars — goes to the log, held in memory until the run directory exists
(``attach``), so a refused input writes nothing and prints only its one line. Our own output goes straight to the
terminal streams the console found, and into the log as well.
"""
from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path
from typing import TextIO

OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("evalsuite", "quant"))
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_active: Console | None = None


class _Router(io.TextIOBase):
    """A text stream whose writes go to the console's log, and to ``terminal`` when verbose."""

    def __init__(self, console: Console, terminal: TextIO):
        self.console, self.terminal = console, terminal

    def write(self, text: str) -> int:
        self.console.to_log(text)
        if self.console.verbose:
            self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return False  # progress bars and colour codes: not into a log

    def fileno(self) -> int:  # subprocesses and faulthandler need a real descriptor
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.terminal, "encoding", "utf-8")


class Console:
    """Use as ``with Console(verbose) as console:``; ``console.attach(path)`` once the run directory may be written."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._buffer: list[str] = []
        self._file: TextIO | None = None

    def __enter__(self) -> Console:
        global _active
        self.out, self.err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Router(self, self.out), _Router(self, self.err)
        self._showwarning, warnings.showwarning = warnings.showwarning, self._warning
        self._handler = logging.StreamHandler(sys.stderr)  # the router: library logs reach the log file
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        self._root_level = root.level
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._root_level)
        warnings.showwarning = self._showwarning
        sys.stdout, sys.stderr = self.out, self.err
        if self._file is not None:
            self._file.close()

    def attach(self, path: Path) -> None:
        """From now on the log goes to ``path`` (appended), starting with what was held back."""
        if self._file is not None:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", buffering=1)
        self._file.write("".join(self._buffer))
        self._buffer.clear()

    def to_log(self, text: str) -> None:
        if self._file is None:
            self._buffer.append(text)
        else:
            self._file.write(text)

    def say(self, line: str) -> None:
        """One line of our own progress: the terminal's stderr and the log."""
        print(line, file=self.err, flush=True)
        self.to_log(line + "\n")

    def show(self, text: str) -> None:
        """Our results (tables, paths): the terminal's stdout and the log."""
        print(text, file=self.out, flush=True)
        self.to_log(text + "\n")

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if str(filename).startswith(OUR_CODE):  # our warnings are for the user: never hidden
            self.err.write(text)
        self.to_log(text)


def say(line: str) -> None:
    """Our progress line, through the active console if there is one."""
    if _active is not None:
        _active.say(line)
    else:
        print(line, file=sys.stderr, flush=True)


def terminal_out() -> TextIO:
    """The terminal's stdout, for text the user asked for (``--help``)."""
    return _active.out if _active is not None else sys.stdout


def progress_stream() -> TextIO | None:
    """Where our own progress bars may draw: the terminal, when it is one; None (no bar) otherwise."""
    stream = _active.err if _active is not None else sys.stderr
    return stream if stream.isatty() else None
