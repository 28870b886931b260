"""README.md and the docs/ pages: every relative link resolves (to a file, and an ``#anchor`` to a heading of it),
README links every page, user-facing text names no issue-tracker numbers, and the sections the code cites exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a ``#`` there is a comment, a ``[x](y)`` is code)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (backticks, colons, apostrophes...) dropped, each space
    a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    return re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text()), flags=re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """The page's heading anchors; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def test_slug_is_github_s():
    assert slug("The default study (`scale: cpu`)") == "the-default-study-scale-cpu"
    assert slug("C6's margin") == "c6s-margin"
    assert slug("Does the device matter?") == "does-the-device-matter"
    assert slug("The H200 batch (2026-12-04)") == "the-h200-batch-2026-12-04"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    problems = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no file {resolved}")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not problems, problems


def test_readme_links_every_docs_page_and_every_page_links_back():
    readme = ROOT / "README.md"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme.read_text())}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README does not link {page.relative_to(ROOT)}"
        assert "](../README.md" in page.read_text(), f"{page.relative_to(ROOT)} does not link back to README.md"


def test_readme_stays_a_front_page():
    assert len(readme_lines := (ROOT / "README.md").read_text().splitlines()) <= 250, len(readme_lines)


def test_user_facing_text_names_no_issue_numbers():
    """Issue-tracker numbers mean nothing to a reader: say what the change or the rows are instead."""
    script = (ROOT / "scripts" / "update_readme.py").read_text()
    generated = "\n".join(re.findall(r'f?"[^"\n]*"', script))  # the script's string literals: its generated lines
    for name, text in [
        *((str(page.relative_to(ROOT)), page.read_text()) for page in PAGES),
        ("update_readme", generated),
    ]:
        assert not re.search(r"\bissues? #?\d+", text, re.IGNORECASE), name


def test_the_dataset_entry_docs_tell_a_user_to_paste_is_valid():
    """The entry docs/datasets.md ("Adding a dataset") tells a user to paste into params.yaml registers as
    documented."""
    import textwrap
    import uuid

    import yaml

    from repro.data.registry import ThresholdMask, register_folder_dataset

    text = (ROOT / "docs" / "datasets.md").read_text()
    block = re.search(r"replace the line `custom_datasets: \{\}`.*?```yaml\n(.*?)```", text, re.DOTALL).group(1)
    entries = yaml.safe_load(textwrap.dedent(block))["custom_datasets"]
    assert list(entries) == ["my-retina"]
    spec = register_folder_dataset(f"docs-example-{uuid.uuid4().hex[:8]}", entries["my-retina"])
    assert spec.mask == ThresholdMask(127) and spec.in_channels == 3 and spec.large_images
    assert spec.path == "/data/my-retina" and spec.layout == "./<stem>.jpg, ./<stem>_1stHO.png"


# `docs/<page>.md, "<heading>"` and `README, "<heading>"` (or `README ("<heading>")`, `README's "<heading>"`) in the
# code name a section.
# Another project's README (U-Net v2's "official README") is not one.
CITATION = re.compile(r'(?<!official )(docs/[\w-]+\.md|README)(?:\'s\s+|\s*,\s*|\s*\(\s*|\s+)\\?"([A-Z][^"\\]*)\\?"')
CITING = [
    *(ROOT / "repro").rglob("*.py"),
    *(ROOT / "scripts").glob("*.py"),
    *(ROOT / "tests").glob("*.py"),
    *(ROOT / "benchmarks").glob("*.py"),
    ROOT / "params.yaml",
    ROOT / "dvc.yaml",
    ROOT / "Makefile",
]


def _indexed_in_readme(name: str) -> bool:
    """README names a section that moved to docs/ as a link to it: ``[<name>](docs/<page>.md#<its anchor>)``
    (the link's heading checked by the link test above), its text possibly wrapped."""
    readme = re.sub(r"\s*\n\s*", " ", (ROOT / "README.md").read_text())
    return any(
        re.sub(r"\s+", " ", text).lower() == name.lower() and anchor == slug(name)
        for text, anchor in re.findall(r"\[([^\]]+)\]\(docs/[\w-]+\.md#([\w-]+)\)", readme)
    )


def test_every_section_the_code_cites_is_a_heading_of_its_page():
    """A section of README.md cited from code that moved to a docs/ page stays found: README links it by name."""
    cited = []
    for path in CITING:
        if path.name == "test_docs.py":
            continue
        text = re.sub(r"\n\s*#\s*|\s*\n\s*", " ", path.read_text())  # a citation may wrap across comment lines
        cited += [(path.relative_to(ROOT), page, name) for page, name in CITATION.findall(text)]
    missing = [
        f"{source}: {page}, {name!r}"
        for source, page, name in cited
        if name not in headings(ROOT / ("README.md" if page == "README" else page))
        and not (page == "README" and _indexed_in_readme(name))
    ]
    assert not missing, missing


def test_the_cluster_file_example_of_running_md_is_valid_settings():
    """docs/running.md's SLURM example is a cluster.yaml a user copies: the runner must accept it as written."""
    import yaml

    from repro.runner.cluster import cluster_settings

    text = (ROOT / "docs" / "running.md").read_text()
    block = text.split("```yaml\n# cluster.yaml\n", 1)[1].split("```", 1)[0]
    settings = cluster_settings(yaml.safe_load(block))
    assert (settings.kind, settings.queue, settings.jobs, settings.runs_per_gpu) == ("slurm", "gpu", 4, 14)
