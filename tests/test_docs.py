"""The documentation is consistent with itself and with the code that cites it.

(a) Every citation of a documentation file in a ``.py`` or ``.md`` file of the
    repository names a file that exists (``docs/<name>.md``; inside ``docs/`` a
    bare ``<name>.md`` is relative), every ``§N`` cited for it is a numbered
    heading of that file, the external spec files are never cited by their bare
    names, and every relative Markdown link resolves.
(b) README.md parsed as CommonMark (markdown-it-py): every code fence is closed,
    and the first fenced block under "Quickstart" holds the install-and-run
    command and the test command, the two commands ``.ci/run`` runs.

Meta-tests plant each kind of error in a temporary tree and assert that the
checkers report it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".ci-venv", ".git", "__pycache__", "data", "runs", "build", "dist"}
SPEC_NAMES = ("algorithm", "theory", "style")  # the external spec files, never shipped
INSTALL_AND_RUN = 'pip install -e ".[test]" && python -m verify.theory'
TEST_COMMAND = "python -m pytest"

_SEC = r"§\d+(?:\.\d+)*"
_SECS = rf"(?P<secs>{_SEC}(?:\s*(?:,|;|and|or)\s*{_SEC})*)"
#: "docs/<name>.md" optionally followed by section numbers, anywhere.
DOCS_CITATION = re.compile(rf"docs/(?P<name>[A-Za-z0-9_-]+)\.md(?:\s*{_SECS})?")
#: Inside docs/: "<name>.md §N" (bare, relative) or a lone "§N" (this file).
LOCAL_CITATION = re.compile(rf"(?:(?<![\w/.-])(?P<name>[A-Za-z0-9_-]+)\.md\s+)?{_SECS}")
BARE_SPEC = re.compile(r"(?<![\w/.-])(?:" + "|".join(SPEC_NAMES) + r")\.md\b")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?(?:\s|$)")

_md = MarkdownIt("commonmark")


def repo_files(root: Path, suffixes=(".py", ".md")) -> list[Path]:
    """Every file with one of ``suffixes`` under ``root``, skipping virtual envs, VCS and data."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                       and not d.endswith(".egg-info")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(suffixes)]
    return sorted(out)


def heading_numbers(path: Path) -> set[str]:
    """The section numbers ("1", "2.1", ...) that start a Markdown heading of ``path``."""
    tokens = _md.parse(path.read_text(encoding="utf-8"))
    numbers = set()
    for opening, inline in zip(tokens, tokens[1:], strict=False):
        if opening.type == "heading_open":
            m = HEADING_NUMBER.match(inline.content.strip())
            if m:
                numbers.add(m.group(1))
    return numbers


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def citation_problems(root: Path) -> list[str]:
    """Citations of absent documentation files or sections, and bare spec-file names."""
    docs = root / "docs"
    cache: dict[Path, set[str]] = {}

    def check(where: str, target: Path, secs: str | None) -> list[str]:
        if not target.is_file():
            return [f"{where}: cites {target.relative_to(root)}, which does not exist"]
        if target not in cache:
            cache[target] = heading_numbers(target)
        return [f"{where}: {target.relative_to(root)} has no section §{s}"
                for s in SECTION.findall(secs or "") if s not in cache[target]]

    problems = []
    for path in repo_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(root)
        in_docs = path.parent == docs
        for m in DOCS_CITATION.finditer(text):
            problems += check(f"{rel}:{_line(text, m.start())}", docs / f"{m['name']}.md", m["secs"])
        if in_docs:
            for m in LOCAL_CITATION.finditer(text):
                if not m["name"] and re.search(r"\.md\s*$", text[max(0, m.start() - 80):m.start()]):
                    continue  # sections of a docs/<name>.md citation, checked above
                target = docs / f"{m['name']}.md" if m["name"] else path
                problems += check(f"{rel}:{_line(text, m.start())}", target, m["secs"])
            for name in re.findall(r"(?<![\w/.-])([A-Za-z0-9_-]+)\.md\b", text):
                if name in SPEC_NAMES and not (docs / f"{name}.md").is_file():
                    problems.append(f"{rel}: cites {name}.md, which is not in docs/")
        else:
            problems += [f"{rel}:{_line(text, m.start())}: bare citation {m.group(0)!r} "
                         "(cite docs/<name>.md §N or a paper's section)" for m in BARE_SPEC.finditer(text)]
    return problems


def link_problems(root: Path) -> list[str]:
    """Relative Markdown links (README.md and docs/) whose target file does not exist."""
    problems = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if not path.is_file():
            continue
        for token in _md.parse(path.read_text(encoding="utf-8")):
            for child in token.children or []:
                href = child.attrs.get("href") if child.type == "link_open" else None
                if not href or re.match(r"^[a-z][a-z0-9+.-]*:|^#", href):
                    continue  # external or in-page
                if not (path.parent / href.split("#")[0]).exists():
                    problems.append(f"{path.relative_to(root)}: link to {href}, which does not exist")
    return problems


def unclosed_fences(text: str) -> list[int]:
    """1-based start lines of code fences that CommonMark leaves open to the end of the document."""
    lines = text.splitlines()
    out = []
    for token in _md.parse(text):
        if token.type != "fence":
            continue
        start, end = token.map
        closing = lines[end - 1].strip() if end - 1 > start else ""
        marker = token.markup[0]
        if not (len(closing) >= len(token.markup) and set(closing) == {marker}):
            out.append(start + 1)
    return out


def quickstart_block(text: str) -> str | None:
    """The content of the first code fence after the "Quickstart" heading and before the next heading."""
    tokens = _md.parse(text)
    inside = False
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            if inside:
                return None
            inside = tokens[i + 1].content.strip().lower() == "quickstart"
        elif inside and token.type == "fence":
            return token.content
    return None


def quickstart_problems(text: str) -> list[str]:
    block = quickstart_block(text)
    if block is None:
        return ["no code fence under the Quickstart heading"]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    problems = []
    if not lines or lines[0] != INSTALL_AND_RUN:
        problems.append(f"line 1 of the Quickstart block is not {INSTALL_AND_RUN!r}: {lines[:1]}")
    if len(lines) < 2 or lines[1] != TEST_COMMAND:
        problems.append(f"line 2 of the Quickstart block is not {TEST_COMMAND!r}: {lines[1:2]}")
    return problems


# -- the repository -----------------------------------------------------------

def test_docs_exist():
    for name in ("README", "algorithm", "theory", "conventions"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"


def test_every_docs_citation_resolves():
    problems = citation_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_markdown_links_resolve():
    problems = link_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_readme_fences_are_closed():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not unclosed_fences(text), f"README.md: unclosed code fence at line(s) {unclosed_fences(text)}"


def test_readme_quickstart_commands():
    problems = quickstart_problems((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_every_claim_is_documented():
    import verify.claims  # noqa: F401 (registers the claims)
    from verify.registry import CLAIMS

    index = (ROOT / "docs/theory.md").read_text(encoding="utf-8")
    missing = sorted(c for c in CLAIMS if f"| `{c}` | §" not in index)
    assert not missing, f"claims missing from the claim index of docs/theory.md §11: {missing}"


def test_ci_runs_the_quickstart_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert INSTALL_AND_RUN in commands and TEST_COMMAND in commands, commands
    assert commands.index(INSTALL_AND_RUN) < commands.index(TEST_COMMAND)


# -- the checkers fail on planted errors ---------------------------------------

def _tree(tmp_path: Path, files: dict) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


D = "docs" + "/"  # built, so that this file does not cite documents that do not exist
DOC = "# Doc\n\n## 1. One\n\n### 1.2 Sub\n\nSee §1.2 and other.md §1.\n"
OTHER = "# Other\n\n## 1. First\n"


def test_citation_checker_accepts_a_consistent_tree(tmp_path):
    code = f'"""See {D}doc.md §1.2 and §1; {D}other.md §1."""\n'
    root = _tree(tmp_path, {f"{D}doc.md": DOC, f"{D}other.md": OTHER, "pkg/mod.py": code})
    assert citation_problems(root) == []


@pytest.mark.parametrize("code, expected", [
    (f'x = 1  # {D}missing.md §1\n', "does not exist"),
    (f'x = 1  # {D}doc.md §1.2 and §7\n', "no section §7"),
    (f'x = 1  # {D}doc.md §1.3\n', "no section §1.3"),
    *[(f'x = 1  # {name}' + '.md 3.2\n', "bare citation") for name in SPEC_NAMES],
])
def test_citation_checker_flags_planted_errors(tmp_path, code, expected):
    root = _tree(tmp_path, {f"{D}doc.md": DOC, f"{D}other.md": OTHER, "pkg/mod.py": code})
    problems = citation_problems(root)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("doc, expected", [
    (DOC + "See §9.\n", "no section §9"),
    (DOC + "See other.md §2.\n", "no section §2"),
    (DOC + "See absent" + ".md §1.\n", "does not exist"),
    (DOC + f"See {SPEC_NAMES[2]}" + ".md.\n", "not in docs/"),
])
def test_citation_checker_flags_planted_errors_inside_docs(tmp_path, doc, expected):
    root = _tree(tmp_path, {f"{D}doc.md": doc, f"{D}other.md": OTHER})
    problems = citation_problems(root)
    assert any(expected in p for p in problems), problems


def test_link_checker_flags_a_missing_target(tmp_path):
    root = _tree(tmp_path, {"README.md": f"[x]({D}doc.md) [y](https://example.org)\n",
                            f"{D}doc.md": "[z](nothere.md)\n"})
    assert link_problems(root) == [f"{D}doc.md: link to nothere.md, which does not exist"]


def test_fence_checker():
    closed = "# T\n\n```bash\nls\n```\n\ntext\n"
    assert unclosed_fences(closed) == []
    assert unclosed_fences("# T\n\n```bash\nls\n\n## Next\n\ntext\n") == [3]
    assert unclosed_fences("a\n\n~~~\nb\n~~~\n\n````\nc\n```\n") == [7]  # a shorter fence does not close


def test_quickstart_checker():
    good = f"# R\n\n## Quickstart\n\nText.\n\n```bash\n{INSTALL_AND_RUN}   # c\n{TEST_COMMAND}\n```\n"
    assert quickstart_problems(good) == []
    assert quickstart_problems(good.replace(TEST_COMMAND, "pytest"))
    assert quickstart_problems(good.replace("## Quickstart", "## Start"))
    unclosed = f"## Quickstart\n\n```bash\n{INSTALL_AND_RUN}\n\n## Next\n"
    assert unclosed_fences(unclosed) and quickstart_problems(unclosed)
