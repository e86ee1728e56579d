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
