"""Run the out-of-date training stages of the pipeline N at a time, then record each in dvc.lock.

`dvc repro` runs stages one after another. On a machine with several cores, several single-threaded runs at
once use the cores better than one multi-threaded run (on 2 cores: two runs with one thread each finish 2.6x
sooner than two runs with two threads each). This runs each stale `train@...` stage's own command from
dvc.yaml in a pool of workers (one thread each), and after each success records it with `dvc commit`, exactly
as `dvc repro` would have. Seeds go first: an interrupted study has every variant at the same number of seeds.

    python scripts/parallel_repro.py -j 2          # then `dvc repro` finishes complexity and aggregate
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]


def stale_train_stages(repo: Repo) -> list[str]:
    """Names of the train stages that `dvc repro` would run, seed-major (seed, then dataset, then model)."""
    stale = [name for name in repo.status() if name.startswith("train@")]
    order = {name: i for i, name in enumerate(s.addressing for s in repo.index.stages)}
    seeds = {name: int(name.rsplit("-", 1)[1]) for name in stale}
    return sorted(stale, key=lambda name: (seeds[name], order[name]))


def run_stage(cmd: str, log: Path, threads: int) -> int:
    env = {**os.environ, "UNET_REPRO_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    with log.open("w") as handle:
        return subprocess.run(cmd, shell=True, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--logs", type=Path, default=ROOT / "checkpoints" / "logs")
    args = parser.parse_args()

    subprocess.run(["dvc", "repro", "prepare"], cwd=ROOT, check=True)
    repo = Repo(str(ROOT))
    stages = stale_train_stages(repo)
    print(f"{len(stages)} training stage(s) to run, {args.jobs} at a time", flush=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        running: dict[Future, tuple[str, float]] = {}
        queue = list(stages)
        while queue or running:
            while queue and len(running) < args.jobs:
                name = queue.pop(0)
                (stage,) = repo.stage.collect(name)
                log = args.logs / f"{name.replace('@', '_')}.log"
                running[pool.submit(run_stage, stage.cmd, log, args.threads)] = (name, time.time())
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name, start = running.pop(future)
                if future.result() == 0:
                    # Only the main thread touches dvc.lock, one commit at a time.
                    subprocess.run(["dvc", "commit", "--force", "--quiet", name], cwd=ROOT, check=True)
                    print(f"done   {name} ({time.time() - start:.0f} s)", flush=True)
                else:
                    failed.append(name)
                    print(f"FAILED {name}: see {args.logs}", flush=True)
    if failed:
        sys.exit(f"{len(failed)} stage(s) failed: {failed}")


if __name__ == "__main__":
    main()
