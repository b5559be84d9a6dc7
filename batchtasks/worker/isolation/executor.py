"""Running an executor program and reading its stdout line protocol.

``Progress: 65 text`` / ``Progress: 65%`` / ``Progress: text`` report progress,
``ResultData: <json>`` sets the result (text that is not JSON is kept as a string),
``ERROR: <message>`` fails the attempt with the lines after it as details. Any other
output (stdout and stderr) is kept as a log: its tail goes into the error's details,
or to the worker's log after a success.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from ...core.exceptions import ConfigurationError, ExecutorFailed
from ...core.plugin import ExecutorPlugin, TaskContext
from ...services.facts import TypeFacts
from ...transitions import Claim
from .. import stopping
from . import reaper
from .supervise import Supervisor

logger = logging.getLogger(__name__)

#: Characters of each kind of output kept (log, stderr, error details).
TAIL_CHARS = 20_000
#: Variables of the worker's environment a program gets; nothing else leaks to it.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "USER", "LOGNAME")
PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%?(?:\s+(.*))?$", re.DOTALL)


class _Tail:
    """The last ``TAIL_CHARS`` characters of a stream of lines."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.size = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > TAIL_CHARS and len(self.lines) > 1:
            self.size -= len(self.lines.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self.lines)[-TAIL_CHARS:]


class Output:
    """What a program said on stdout and stderr, read with the line protocol."""

    def __init__(self, context: TaskContext, on_activity: Callable[[], None]) -> None:
        self.context = context
        #: Called for every line: the program's life sign for the inactivity watchdog.
        self.on_activity = on_activity
        self.percent = 0
        self.result: Any = None
        self.error: str | None = None
        self.details, self.log, self.stderr = _Tail(), _Tail(), _Tail()

    def stdout_line(self, line: str) -> None:
        self.on_activity()
        if line.startswith("Progress:"):
            self._progress(line.removeprefix("Progress:").strip())
        elif line.startswith("ResultData:"):
            self.result = _json_or_text(line.removeprefix("ResultData:").strip())
        elif line.startswith("ERROR:"):
            self.error = line.removeprefix("ERROR:").strip()
        elif self.error is not None:
            self.details.add(line)
        else:
            self.log.add(line)

    def stderr_line(self, line: str) -> None:
        self.on_activity()
        self.stderr.add(line)

    def _progress(self, text: str) -> None:
        match = PERCENT_RE.match(text)
        if match:
            self.percent = max(0, min(100, int(float(match.group(1)))))
            text = (match.group(2) or "").strip()
        self.context.report_progress(self.percent, text[:500])

    def outcome(self, name: str, returncode: int) -> Any:
        """The result of a run that ended by itself, or ``ExecutorFailed``."""
        if returncode == 0 and self.error is None:
            if self.log.lines or self.stderr.lines:
                logger.info(
                    "batchtasks executor output task=%s type=%s\n%s\n%s",
                    self.context.task_id,
                    name,
                    self.log.text(),
                    self.stderr.text(),
                )
            return self.result
        if returncode < 0:
            how = f"was killed by {_signal_name(-returncode)}"
        else:
            how = f"exited with code {returncode}"
        message = f"Executor {name!r} {how}" + (f": {self.error}" if self.error else ".")
        parts = [
            ("ERROR details", self.details),
            ("stderr (tail)", self.stderr),
            ("other output (tail)", self.log),
        ]
        details = "\n\n".join(f"--- {title} ---\n{tail.text()}" for title, tail in parts)
        raise ExecutorFailed(message, details=f"{message}\n\n{details}")


def run(
    plugin_cls: type[ExecutorPlugin], claim: Claim, facts: TypeFacts, context: TaskContext
) -> Any:
    """Run the program of ``plugin_cls`` for this attempt in a working directory of its
    own (removed afterwards) and return its result, or raise what its end means."""
    workdir = Path(tempfile.mkdtemp(prefix=f"batchtasks-{claim.task_id}-{claim.attempt}-"))
    try:
        with reaper.adopting() as orphans:
            program = subprocess.Popen(
                list(plugin_cls.command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=environment(plugin_cls, claim, workdir),
                start_new_session=True,
            )
            return _supervise(program, claim, facts, context, orphans)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(
    program: subprocess.Popen[bytes],
    claim: Claim,
    facts: TypeFacts,
    context: TaskContext,
    orphans: reaper.Orphans,
) -> Any:
    assert program.stdin and program.stdout and program.stderr
    supervisor = Supervisor(program, context, inactivity=facts.inactivity_timeout, orphans=orphans)
    output = Output(context, supervisor.active)
    feeder = threading.Thread(
        target=_feed, args=(program.stdin, claim.data), name="batchtasks-stdin", daemon=True
    )
    feeder.start()
    with stopping.child_group(program.pid):
        try:
            supervisor.watch(
                {
                    program.stdout.fileno(): output.stdout_line,
                    program.stderr.fileno(): output.stderr_line,
                }
            )
        finally:
            supervisor.finish()
            program.stdout.close()
            program.stderr.close()
    supervisor.raise_for_stop()
    return output.outcome(facts.name, program.returncode)


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the parameters to the program's stdin and close it (in a thread: a program
    that reads them late must not block the supervisor)."""
    with contextlib.suppress(OSError):
        stdin.write(data)
    with contextlib.suppress(OSError):
        stdin.close()


def environment(plugin_cls: type[ExecutorPlugin], claim: Claim, workdir: Path) -> dict[str, str]:
    """The program's environment: a few of the worker's, the attempt, its declared
    settings (secrets travel here, never in argv)."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(
        TMPDIR=str(workdir),
        BATCHTASKS_TASK_ID=str(claim.task_id),
        BATCHTASKS_ATTEMPT=str(claim.attempt),
    )
    for variable, setting in plugin_cls.environment.items():
        if not hasattr(settings, setting):
            raise ConfigurationError(
                f"{plugin_cls.__qualname__}.environment maps {variable!r} to the Django setting "
                f"{setting!r}, which is not set; add it to your settings."
            )
        env[variable] = str(getattr(settings, setting))
    return env


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
