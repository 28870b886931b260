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


def test_readme_explains_every_verdict_label_in_one_line_and_uses_only_those_labels():
    from repro import verdicts

    block = re.search(r"<!-- verdict-labels:start -->\n(.*?)<!-- verdict-labels:end -->", README, re.DOTALL)
    lines = block.group(1).splitlines()
    assert [line.split("`")[1] for line in lines] == list(verdicts.MEANINGS)
    claims = re.search(r"<!-- claims-table:start -->\n(.*?)<!-- claims-table:end -->", README, re.DOTALL).group(1)
    used = {row.split(" | ")[-2] for row in claims.splitlines()[2:]}
    assert used <= set(verdicts.LABELS), used - set(verdicts.LABELS)


def test_readme_tables_name_the_script_that_copies_them():
    results = README.index("<!-- results-table:start -->")
    assert "scripts/update_readme.py" in README[results - 600 : results]
    assert re.search(r"\| 0\.124 \| 0\.115 \|", README), "parameters in millions at 3 significant figures"
