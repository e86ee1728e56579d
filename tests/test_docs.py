"""The project documents itself: every docs/ page that the code, --help or the README cites exists in the repo."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"docs/[\w.-]+\.md")


def _citing_files():
    yield ROOT / "README.md"
    for folder in ("scan_fast", "kernels", "bench", "csrc"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".cpp", ".hpp", ".sh") and "__pycache__" not in path.parts:
                yield path


def test_every_cited_docs_page_exists():
    cited = {}
    for path in _citing_files():
        for page in CITED.findall(path.read_text(errors="replace")):
            cited.setdefault(page, []).append(path.relative_to(ROOT).as_posix())
    missing = {page: where for page, where in cited.items() if not (ROOT / page).is_file()}
    assert not missing, f"cited but not in the repository: {missing}"
    assert {"docs/scan-method.md", "docs/architecture.md"} <= set(cited)


def test_the_docs_name_every_training_flag_and_what_may_change_on_resume():
    from scan_fast.train.config import ClipConfig, MocoConfig
    from scan_fast.train.resume import MAY_CHANGE

    text = (ROOT / "docs/architecture.md").read_text() + (ROOT / "docs/scan-method.md").read_text()
    names = {f for cls in (ClipConfig, MocoConfig) for f in cls.__dataclass_fields__}
    for name in sorted(names | set(MAY_CHANGE)):
        flag = "--" + name.replace("_", "-")
        assert flag in text, f"{flag} is not described in docs/"


def test_the_architecture_map_names_only_files_that_exist():
    """Every source file docs/architecture.md names (a path, or a bare name inside its folder's row) exists."""
    text = (ROOT / "docs/architecture.md").read_text()
    sources = [p for folder in ("scan_fast", "kernels", "csrc", "bench", "tests") for p in (ROOT / folder).rglob("*")
               if p.suffix in (".py", ".cpp", ".hpp", ".sh")]
    paths = {p.relative_to(ROOT).as_posix() for p in sources}
    names = {p.name for p in sources}
    missing = []
    for token in re.findall(r"`([\w/.-]+\.(?:py|cpp|hpp|sh))`", text):
        if not (token in paths if "/" in token else token in names):
            missing.append(token)
    assert not missing, f"docs/architecture.md names files that do not exist: {sorted(set(missing))}"


def _trip(title):
    text = (ROOT / "docs/architecture.md").read_text()
    return text.split(f"## How {title} travels", 1)[1].split("\n## ", 1)[0]


def _resolve(dotted):
    """The object `dotted` names (module.attribute[.attribute]), imported; None when it does not exist."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


@pytest.mark.parametrize("title, most_hops", [("a sample id", 8), ("a per-sample loss", 6)])
def test_every_function_a_trip_names_exists_where_it_says(title, most_hops):
    """The trips of docs/architecture.md name real functions: each `scan_fast.module.function` imports; each hop
    names at least one, and the trip has at most `most_hops` hops (a longer one is a code change to explain)."""
    trip = _trip(title)
    hops = re.split(r"^\d+\. \*\*", trip, flags=re.M)[1:]
    assert 0 < len(hops) <= most_hops, f"the trip of {title} has {len(hops)} hops"
    named = re.findall(r"`(scan_fast(?:\.\w+)+)(?:\([^`]*\))?`", trip)
    missing = sorted({name for name in named if _resolve(name) is None})
    assert not missing, f"docs/architecture.md's trip of {title} names what does not exist: {missing}"
    for number, hop in enumerate(hops, 1):
        assert re.search(r"`scan_fast\.\w+", hop), f"hop {number} of {title}'s trip names no function"


def test_every_image_the_readme_and_docs_show_is_in_the_repository():
    shown = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in shown.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(ROOT).as_posix()}: {target}")
    assert not missing, f"images shown but not in the repository: {missing}"


def test_the_library_does_not_import_the_demo_app():
    """scan_fast/demo/ is the demo app: of the package, only the command line (cli.py) imports it, so the
    library (data, schedule, ops, train, kernels) stands without it, as docs/architecture.md says."""
    importers = []
    for path in sorted((ROOT / "scan_fast").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("scan_fast/demo/") or relative == "scan_fast/cli.py":
            continue
        if re.search(r"^\s*(from scan_fast\.demo\b|from scan_fast import demo\b|import scan_fast\.demo\b)",
                     path.read_text(), re.M):
            importers.append(relative)
    assert not importers, f"library modules import the demo app: {importers}"
