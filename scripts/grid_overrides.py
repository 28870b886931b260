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
    return _flags("study", grids[name])


def _flags(prefix: str, section: dict) -> list[str]:
    """One `-S key=[...]` per list, nested sections (`volumes:`) as dotted keys."""
    flags = []
    for key, value in section.items():
        if isinstance(value, dict):
            flags += _flags(f"{prefix}.{key}", value)
        else:
            flags.append(f"-S {prefix}.{key}=[{','.join(map(str, value))}]")
    return flags


if __name__ == "__main__":
    print(" ".join(overrides(sys.argv[1])))
