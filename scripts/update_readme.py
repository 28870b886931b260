"""Copy the generated headline tables, and the meaning of each verdict label, into README.md between their
markers, so the README never drifts from `results/` and `repro/verdicts.py` (tests/test_readme.py checks that
it has not).

    python scripts/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro import verdicts  # noqa: E402 - the repository root must be importable first

TABLES = {"results-table": "results/tables/results.md", "claims-table": "results/tables/claim_verdicts.md"}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def label_lines() -> str:
    """One line per verdict label: what it means."""
    return "".join(f"- `{label}`: {meaning}.\n" for label, meaning in verdicts.MEANINGS.items())


def blocks() -> dict[str, str]:
    """Marker name -> the text that belongs between its markers."""
    generated = {name: (ROOT / source).read_text() for name, source in TABLES.items()}
    return generated | {"verdict-labels": label_lines()}


def render(readme: str) -> str:
    for name, text in blocks().items():
        readme, count = block_pattern(name).subn(lambda m, t=text: m.group(1) + t + m.group(3), readme)
        if count != 1:
            raise SystemExit(f"README.md needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> block")
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
