"""A demo executor: reads its parameters as JSON on stdin, speaks the line protocol.

Parameters (all optional): ``steps`` and ``delay`` (progress lines ``Progress: <n> step
i of n``), ``note`` (a text-only progress line), ``log`` and ``stderr`` (other output),
``spawn`` (start ``sleep 300`` and note its pid under
``$BATCHTASKS_DEMO_MEDIA/batchtasks/pids/<task id>``), ``escape`` (a list of seconds:
for each, a ``sleep`` started as a daemon is, out of the program's process group, its pid
noted the same way), ``silent`` (seconds without a
word), ``result`` (printed as ``ResultData:``; by default the working directory and
the parameter names), ``error`` and ``details`` (``ERROR:`` and the lines after it),
``exit`` (the exit code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def note_pid(pid: int) -> None:
    media, task = os.environ.get("BATCHTASKS_DEMO_MEDIA"), os.environ.get("BATCHTASKS_TASK_ID")
    if media and task:
        folder = Path(media) / "batchtasks" / "pids"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / task).open("a") as fh:
            fh.write(f"{pid}\n")


def escape(seconds: float) -> int:
    """Start ``sleep seconds`` the way a daemon starts: fork, ``setsid()`` (leaving the
    process group), fork again and let the middle process exit (leaving its parent).
    Returns the pid of the ``sleep``."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.setsid()
            sleeper = os.fork()
            if sleeper == 0:
                os.execvp("sleep", ["sleep", str(seconds)])
            os.write(write_end, str(sleeper).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        pid = int(pipe.read())
    os.waitpid(middle, 0)
    return pid


def main() -> int:
    text = sys.stdin.read()
    params: dict[str, Any] = json.loads(text) if text.strip() else {}
    if params.get("log"):
        print(params["log"], flush=True)
    if params.get("stderr"):
        print(params["stderr"], file=sys.stderr, flush=True)
    if params.get("spawn"):
        note_pid(subprocess.Popen(["sleep", "300"]).pid)
    for seconds in params.get("escape", []):
        note_pid(escape(float(seconds)))
    steps = int(params.get("steps", 0))
    for step in range(1, steps + 1):
        time.sleep(float(params.get("delay", 0.1)))
        print(f"Progress: {100 * step // steps} step {step} of {steps}", flush=True)
    if params.get("note"):
        print(f"Progress: {params['note']}", flush=True)
    time.sleep(float(params.get("silent", 0)))
    if params.get("error"):
        print(f"ERROR: {params['error']}")
        for line in params.get("details", []):
            print(line)
        return int(params.get("exit", 1))
    result = params.get("result", {"cwd": os.getcwd(), "params": sorted(params)})
    print(f"ResultData: {json.dumps(result)}", flush=True)
    return int(params.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
