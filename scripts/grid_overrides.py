"""Print `dvc exp run` overrides that make a named grid of params.yaml (`grids.<name>`) the study grid.

dvc exp run -S scale=paper $(python scripts/grid_overrides.py full)
"""

from __future__ import annotations

import sys

from repro.config import load_params


def overrides(name: str) -> list[str]:
    grids = load_params()["grids"]
    if name not in grids:
        raise SystemExit(f"unknown grid '{name}'; params.yaml defines: {', '.join(grids)}")
    return [f"-S study.{key}=[{','.join(map(str, values))}]" for key, values in grids[name].items()]


if __name__ == "__main__":
    print(" ".join(overrides(sys.argv[1])))
