"""The documentation stands alone: no file cites material outside the repository, every relative link in the
markdown resolves (file and heading), and every test a page names exists."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
# What a user of the repository does not have: the specification the project was first written from.
OUTSIDE_REFERENCES = re.compile(r"\.\./shared|ELIP_SPEC|\bspec \d+\.\d+", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def repository_files():
    """Tracked files and new ones git does not ignore (what a clone or the next commit holds)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sorted({p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))})


def markdown_pages():
    pages = ["README.md", "BENCHMARKS.md"]
    if os.path.isdir(DOCS):
        pages += sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))
    return pages


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set:
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def test_the_docs_folder_describes_every_method():
    assert os.path.isdir(DOCS), "docs/ is missing: the project's own description of its methods"
    pages = {f for f in os.listdir(DOCS) if f.endswith(".md")}
    assert {"README.md", "elip.md", "other_methods.md", "invariants.md"} <= pages
    text = " ".join(open(os.path.join(DOCS, f), encoding="utf-8").read() for f in pages)
    from elip_jax.reduction import registered_methods
    for method in registered_methods():
        assert f"`{method}`" in text, f"docs/ does not describe the method {method!r}"


def test_no_file_outside_docs_cites_material_the_repository_does_not_have():
    offenders = []
    for path in repository_files():
        if path.startswith("docs/") or path == "tests/test_docs.py":
            continue
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_REFERENCES.search(line):
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "cite docs/ instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("page", markdown_pages())
def test_every_relative_markdown_link_resolves_inside_the_repository(page):
    source = os.path.join(REPO, page)
    with open(source, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
        if os.path.commonpath([resolved, REPO]) != REPO:
            broken.append(f"{target}: outside the repository")
        elif not os.path.exists(resolved):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, REPO)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_every_test_the_docs_name_exists():
    defined = set()
    for name in os.listdir(os.path.join(REPO, "tests")):
        if name.endswith(".py"):
            with open(os.path.join(REPO, "tests", name), encoding="utf-8") as f:
                defined |= set(re.findall(r"^def (test_\w+)", f.read(), re.MULTILINE))
    named = set()
    for page in os.listdir(DOCS) if os.path.isdir(DOCS) else ():
        if page.endswith(".md"):
            with open(os.path.join(DOCS, page), encoding="utf-8") as f:
                named |= set(re.findall(r"`(test_\w+)`", f.read()))
    assert named and not named - defined, f"docs/ names tests that do not exist: {sorted(named - defined)}"
