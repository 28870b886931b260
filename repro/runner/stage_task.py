"""What a Dask worker does for one pipeline stage: run its command from dvc.yaml, and nothing else.

The worker runs the command through a small guard process (``python -m repro.runner.stage_task CMD``) whose standard
input is a pipe held by the worker. The command runs in its own process group, so the guard can end all of it,
and the pipe tells the guard when to: it reaches end-of-file when the worker process dies (even by SIGKILL, when
no clean-up code of the worker can run) or when the task gives up the run (cancelled by the client). Without it
a killed worker would leave its papermill process training, orphaned, while the scheduler hands the same run to
another worker, and two processes would write one run's checkpoint and outputs.

The guard also keeps the run's log readable: papermill's "Executing Cell N" / "Ending Cell N" markers and the
kernel's "running over TCP without encryption" warning (one line per cell, each run) are dropped on the way to the
log; every other line (the run's settings, its epoch lines, any error) is kept. dvc.yaml's command stays as it is,
so no recorded run goes stale for it. :func:`failure_cause` picks the line of a failed command's output that says
why it failed, which the runner prints last.

This module imports no torch: it is imported by every worker and started once per run. Its one project import,
``repro.config`` (for :data:`~repro.config.THREADS_ENV`), brings yaml, NumPy and Pillow (about 0.15 s and 20 MB).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from repro.config import THREADS_ENV

# The Dask topic on which tasks announce their start and failures (the client's progress display listens).
TOPIC = "unet-repro-stage"
# The task states in which a worker still wants the task's result; anything else means the client let go.
_WANTED = ("executing", "long-running")


# Lines of a stage's (or DVC's) output that say nothing about the run: papermill's cell markers, the Jupyter kernel's
# transport warning, DVC's progress bars and lock messages (drawn only on a terminal, but dropped wherever they come).
NOISE = re.compile(
    r"^\s*(?:(?:Executing|Ending) Cell \d+-*"
    r"|.*Kernel is running over TCP without encryption.*"
    r"|.*Waiting to acquire lock.*"
    r"|.*Collecting files and computing hashes.*"
    r"|\d{1,3}%\s*\|.*\|.*)\s*$"
)
# Terminal colours and cursor movements (IPython colours its tracebacks, tqdm moves the cursor).
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
# A line that states an error: a Python exception (``ValueError: ...``, ``dvc.exceptions.DvcException: ...``), the
# one-line ``error: ...`` of this project's command lines, DVC's ``ERROR: ...``.
_ERROR = re.compile(
    r"^(?:(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::.*)?|error: .+|ERROR: .+)$"
)
# DVC's line after a command that failed: it names the command, not the reason, which the command printed before.
_DVC_WRAPPER = re.compile(r"^ERROR: failed to reproduce .*: failed to run: .*, exited with -?\d+$")


def is_noise(line: str) -> bool:
    """Whether an output line is one of :data:`NOISE`'s."""
    return bool(NOISE.match(_ESCAPES.sub("", line)))


def copy_output(source, sink) -> None:
    """Copy the lines of the binary stream ``source`` to ``sink`` (binary) as they come, without :data:`NOISE`;
    stops quietly when ``sink`` is closed (its owner gave up waiting for the rest)."""
    try:
        for line in iter(source.readline, b""):
            if not is_noise(line.decode(errors="replace")):
                sink.write(line)
                sink.flush()
    except (OSError, ValueError):
        pass


def meaningful_lines(text: str) -> list[str]:
    """The non-blank lines of a command's output, less :data:`NOISE`, colours and trailing blanks removed."""
    lines = (_ESCAPES.sub("", line).rstrip() for line in text.splitlines())
    return [line for line in lines if line.strip() and not NOISE.match(line)]


def failure_cause(text: str) -> str | None:
    """Why a command failed, from its output: the last line that states an error (a Python exception, an
    ``error: ...`` line), DVC's own "failed to run ..." only where the command said nothing, else the last line;
    None for an empty output."""
    lines = meaningful_lines(text)
    wrapper = None
    for line in reversed(lines):
        stripped = line.strip()
        if _DVC_WRAPPER.match(stripped):
            wrapper = wrapper or stripped
        elif _ERROR.match(stripped) and not stripped.endswith(("Error:", "Exception:")):
            return stripped
    return wrapper or (lines[-1].strip() if lines else None)


class StageFailed(RuntimeError):
    """A stage's command exited with an error; ``log`` holds its output and ``cause`` the line of it that says why
    (:func:`failure_cause`, read on the worker when the command ended; None for a run stopped on request)."""

    def __init__(self, stage: str, returncode: int, log: str, cause: str | None = None) -> None:
        self.stage, self.returncode, self.log, self.cause = stage, returncode, log, cause
        super().__init__(f"{stage}: command exited with status {returncode} (output in {log})")

    def __reduce__(self):
        return StageFailed, (self.stage, self.returncode, self.log, self.cause)


def run_environment(threads: int, gpu: str | None = None) -> dict[str, str]:
    """The environment a run's command gets on a worker: the worker's own, with ``threads`` torch and OpenMP
    threads, the GPU ``gpu`` alone when given, glibc's own malloc tuning, and the worker's Python environment first
    on PATH.

    The command calls ``papermill`` by name. A runner started as ``.venv/bin/python -m repro.study`` without the
    environment activated would otherwise have every run fail at once with status 127 (command not found); the
    worker's interpreter is the study's environment, so its scripts folder (``papermill`` beside ``python``) comes
    first.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` to keep the worker's memory low. Set
    explicitly, it also turns off glibc's adaptive mmap threshold, so every tensor above 128 KiB is mapped and
    unmapped on each training step: a UNet++ step at the cpu scale then spends 0.80 s in the kernel (page faults)
    beside 1.17 s of computing, against 0.13 s beside 1.39 s without it. The run is not the worker; it goes.
    """
    env = {**os.environ, THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def run_stage(stage: str, cmd: str, root: str, log: str, threads: int, pin_gpu: bool = False) -> dict:
    """The Dask task: run ``cmd`` in ``root`` with ``threads`` torch threads, output to ``log``.

    Args:
        stage: the stage's name, which is also the task's key.
        cmd: the stage's exact command from dvc.yaml.
        root: the repository root (on the filesystem the client and the workers share).
        log: file for the command's output.
        threads: torch threads of the run (``$UNET_REPRO_THREADS``).
        pin_gpu: give the run the GPU whose index is the worker's name (a local cluster of one worker per GPU).

    Returns:
        The stage name, the worker's address and the run's wall time in seconds.

    Raises:
        StageFailed: the command exited with an error (Dask retries the task as configured).
    """
    from distributed import get_worker

    worker = get_worker()
    task = worker.state.tasks.get(stage)
    env = run_environment(threads, gpu=str(worker.name) if pin_gpu else None)
    worker.log_event(TOPIC, {"stage": stage, "event": "start"})
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as output:
        guard = subprocess.Popen(
            [sys.executable, "-m", "repro.runner.stage_task", cmd],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    while True:
        try:
            returncode = guard.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            # The same key may come back to this worker as a new task: only this task object counts.
            if worker.state.tasks.get(stage) is not task or task.state not in _WANTED:
                guard.stdin.close()  # the guard ends the command's process group
                guard.wait()
                raise StageFailed(stage, -1, log) from None
    seconds = time.perf_counter() - start
    if returncode != 0:
        # The cause travels with the event: a retry writes its own output over this log.
        cause = failure_cause(Path(log).read_text(errors="replace"))
        worker.log_event(TOPIC, {"stage": stage, "event": "failed", "returncode": returncode, "cause": cause})
        raise StageFailed(stage, returncode, log, cause)
    return {"stage": stage, "worker": worker.address, "seconds": seconds}


def _guard(cmd: str) -> int:
    """Run ``cmd`` in a new process group, its output (less :data:`NOISE`) to this process's; end the group when
    stdin closes or on SIGINT/SIGTERM."""
    process = subprocess.Popen(
        cmd, shell=True, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = threading.Thread(target=copy_output, args=(process.stdout, sys.stdout.buffer), daemon=True)
    output.start()

    def end(*_) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        # The papermill kernel sits in a session of its own and exits by itself once papermill is gone.
        os._exit(process.poll() or 1)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), end()), daemon=True).start()
    returncode = process.wait()
    # The rest of its output; a notebook kernel that outlives papermill by a moment holds the pipe open that long.
    output.join(timeout=10)
    return returncode


if __name__ == "__main__":
    # os._exit: a normal exit would wait at shutdown for the stdin lock that the watching thread holds.
    os._exit(_guard(sys.argv[1]))
