"""README.md: its two commands exist, and its headline tables are the generated ones."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_generated_ones():
    assert _update_readme().render(README) == README, "run `python scripts/update_readme.py`"


def test_readme_two_commands_are_make_targets_and_ci_runs_the_test_one():
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["study", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^study:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")
