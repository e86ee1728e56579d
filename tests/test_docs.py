"""The project documents itself: every docs/ page that the code, --help or the README cites exists in the repo."""
import re
from pathlib import Path

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


def test_the_architecture_map_names_only_files_that_exist_and_the_id_trip_is_short():
    """Every source file docs/architecture.md names (a path, or a bare name inside its folder's row) exists,
    and the id's trip from the data to the schedule and back takes at most 8 numbered hops."""
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
    trip = text.split("## How a sample id travels", 1)[1].split("\n## ", 1)[0]
    hops = re.findall(r"^\d+\. \*\*", trip, flags=re.M)
    assert 0 < len(hops) <= 8, f"the id's trip has {len(hops)} hops"


def test_every_image_the_readme_and_docs_show_is_in_the_repository():
    shown = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in shown.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(ROOT).as_posix()}: {target}")
    assert not missing, f"images shown but not in the repository: {missing}"
