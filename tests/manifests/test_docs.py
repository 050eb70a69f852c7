"""docs/: every relative link (and its #anchor) resolves, and nothing cites a document outside the
repository."""

from __future__ import annotations

import re
from pathlib import Path

from support import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "operator" / "README.md",
                                               ROOT / "charts" / "textrec" / "README.md"]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


def test_relative_links_resolve() -> None:
    problems = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, frag = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists():
                problems.append(f"{doc.relative_to(ROOT)}: {link}: no such file")
            elif frag and target.suffix == ".md" and frag not in anchors(target):
                problems.append(f"{doc.relative_to(ROOT)}: {link}: no such heading")
    assert not problems, "\n".join(problems)


def test_docs_index_lists_every_document() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [d.name for d in (ROOT / "docs").glob("*.md") if d.name != "README.md" and f"({d.name})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"
