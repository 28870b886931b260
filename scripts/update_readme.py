"""Copy the generated headline tables into README.md, between their markers, so the README never drifts
from `results/` (tests/test_readme.py checks that it has not).

    python scripts/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {"results-table": "results/tables/results.md", "claims-table": "results/tables/claim_verdicts.md"}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def render(readme: str) -> str:
    for name, source in BLOCKS.items():
        table = (ROOT / source).read_text()
        readme, count = block_pattern(name).subn(lambda m, t=table: m.group(1) + t + m.group(3), readme)
        if count != 1:
            raise SystemExit(f"README.md needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> block")
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
