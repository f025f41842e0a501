"""The project's documentation stands on its own: every cited ``*.md`` exists in the repository, nothing
cites documents kept outside it, and the licence, citation file and version number agree."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import itkm_lightning

REPO = Path(__file__).resolve().parents[1]
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\.?/)*[\w.-]+(?:/[\w.-]+)*\.md)\b")
"""A cited markdown file: ``method.md``, ``docs/protocols.md``, ``../docs/protocols.md`` (not a URL's tail)."""


def citing_files(repo: Path) -> list[Path]:
    """README, docs, data and benchmark READMEs, configs, scripts and the package's source."""
    files = [repo / "README.md", *sorted((repo / "docs").glob("*.md")), *sorted((repo / "src").rglob("*.py")),
             *sorted((repo / "conf").rglob("*.yaml")), *sorted((repo / "scripts").glob("*.py"))]
    files += [p for p in (repo / "data" / "README.md", repo / "benchmarks" / "README.md") if p.is_file()]
    return [p for p in files if p.is_file()]


def cited_markdown(path: Path) -> list[str]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"https?://\S+", "", line)  # a web address is not a file of the repository
        names += MD_NAME.findall(line)
    return names


def missing_citations(repo: Path) -> list[str]:
    """``file: name`` for every cited ``*.md`` that is neither next to the citing file nor at the repo root."""
    missing = []
    for path in citing_files(repo):
        for name in cited_markdown(path):
            if not ((path.parent / name).is_file() or (repo / name).is_file()):
                missing.append(f"{path.relative_to(repo)}: {name}")
    return missing


def test_every_cited_markdown_file_exists_in_the_repository():
    assert missing_citations(REPO) == []
    cited = {name for path in citing_files(REPO) for name in cited_markdown(path)}
    assert {"docs/method.md", "docs/protocols.md"} <= cited  # the source cites the project's own docs


def test_the_check_finds_a_citation_of_a_missing_file(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "docs" / "method.md").write_text("See `protocols.md` 5.1 and https://example.org/x.md.\n")
    (tmp_path / "docs" / "protocols.md").write_text("# protocols\n")
    (tmp_path / "README.md").write_text("Read docs/method.md and ../docs/demo.md.\n")
    (tmp_path / "src" / "pkg" / "mod.py").write_text('"""The recipe of method.md 6.2 and docs/protocols.md."""\n')
    assert missing_citations(tmp_path) == ["README.md: ../docs/demo.md", "src/pkg/mod.py: method.md"]


def test_nothing_cites_documents_kept_outside_the_repository():
    for path in citing_files(REPO):
        text = path.read_text(encoding="utf-8")
        assert "shared/docs" not in text, path
        assert "synthetic-demo.md" not in text, path


def test_one_version_number_everywhere():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert itkm_lightning.__version__ == version == importlib.metadata.version("itkm-lightning")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert str(citation["version"]) == version
    readme = (REPO / "README.md").read_text()
    assert f"version {version}" in readme
    stated = re.findall(r"\b(?:[Vv]ersion |v)(\d+\.\d+(?:\.\d+)?)\b", readme)
    assert stated and set(stated) == {version}, stated  # e.g. no "v0.2" beside "version 0.1.0"


def test_licence_and_citation_file():
    licence = (REPO / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Image-Text Knowledge Modeling for Unsupervised Multi-Scenario Person Re-Identification"
    assert paper["year"] == 2026 and paper["authors"][0]["family-names"] == "Pang"


@pytest.mark.parametrize("name", ["method.md", "protocols.md"])
def test_project_docs_keep_the_section_numbers_the_code_cites(name):
    """The source cites sections such as ``docs/method.md 6.2``; each must be a heading of that file."""
    text = (REPO / "docs" / name).read_text()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.MULTILINE))
    cited = set()
    for path in citing_files(REPO):
        for match in re.finditer(rf"docs/{re.escape(name)}(?:,? sections?)? (\d+(?:\.\d+)?)", path.read_text()):
            cited.add(match.group(1))
    assert cited and cited <= headings, cited - headings
