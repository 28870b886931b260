"""The CPU the study's local Dask cluster takes from the runs while it only waits on them.

A run is a subprocess that lasts minutes to hours; meanwhile the runner process (scheduler, nannies, client, the
runner's wait loop) and the worker processes keep working on their own account. This starts the local cluster as
`repro.runner.cluster.start_cluster` does, gives each worker one run (`sleep`, which takes no CPU itself), waits on
them with the runner's own queue (`repro.runner.execute.RunQueue`), and counts the CPU time (user + system) of the
runner's and the workers' processes over a window; then the same with Dask's defaults
(`repro.runner.cluster.QUIET_DASK` emptied). Rounds alternate between the two, so that other work on the machine
weighs on both alike.

    python benchmarks/runner_idle_cpu.py [--workers 2] [--seconds 45] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

import repro.runner.cluster
from repro.runner.cluster import cluster_settings, start_cluster
from repro.runner.execute import RunQueue


def one_run(seconds: float) -> None:
    """Stands for a training run: a subprocess the worker waits on, taking no CPU of its own."""
    subprocess.run(["sleep", str(seconds)], check=True)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def idle_share(workers: int, seconds: float, quiet: dict) -> float:
    """CPU time of the runner's and the workers' processes per second of a window while each worker waits on one
    run, as a fraction of one core."""
    repro.runner.cluster.QUIET_DASK = quiet
    with tempfile.TemporaryDirectory(prefix="unet-repro-idle-") as logs:
        settings = cluster_settings({}, {"workers": workers, "dashboard_address": "127.0.0.1:0"})
        cluster, client = start_cluster(settings, Path(logs))
        try:
            client.wait_for_workers(workers)
            processes = [psutil.Process(), *(psutil.Process(pid) for pid in client.run(os.getpid).values())]
            queue = RunQueue(
                [f"run-{index}" for index in range(workers)],
                lambda name: client.submit(one_run, seconds + 20, key=name, pure=False),
            )
            queue.step(workers, timeout=5.0)  # submitted; the workers settle
            before, start = cpu_seconds(processes), time.perf_counter()
            while time.perf_counter() - start < seconds:
                assert not queue.step(workers), "a run ended inside the window: raise --seconds' margin"
            return (cpu_seconds(processes) - before) / (time.perf_counter() - start)
        finally:
            client.close()
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=45.0, help="length of each measured window")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet = dict(repro.runner.cluster.QUIET_DASK)
    shares: dict[str, list[float]] = {"the study's settings": [], "Dask's defaults": []}
    for _ in range(args.rounds):
        shares["the study's settings"].append(idle_share(args.workers, args.seconds, quiet))
        shares["Dask's defaults"].append(idle_share(args.workers, args.seconds, {}))
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    print(f"local cluster of {args.workers} workers waiting on {args.workers} runs ({args.rounds} rounds of")
    print(f"{args.seconds:.0f} s windows, on {machine}):")
    for name, values in shares.items():
        rounds = ", ".join(f"{100 * value:.1f}" for value in values)
        print(f"  {name}: {100 * statistics.median(values):.1f}% of one core (median; rounds: {rounds})")
    print(f"  settings: {quiet}")


if __name__ == "__main__":
    main()
