"""Every run config in configs/ is read by the command its first line names (`--config`) and gives a valid config."""
import shlex
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def _command(path):
    """The argv after `scan-fast` (or `-m -- scan_fast.cli`) of the config's first line, a comment."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name}: the first line must be the command that reads it"
    argv = shlex.split(first[2:])
    start = argv.index("scan_fast.cli") + 1 if "scan_fast.cli" in argv else argv.index("scan-fast") + 1
    return argv[start:]


def test_the_recipes_are_there():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "siglip-shapes.yaml", "datacomp-small-8gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_config_parses_and_validates(path):
    from scan_fast.cli import build_parser
    from scan_fast.flags import config_from_args, read_config_file

    argv = _command(path)
    assert argv[argv.index("--config") + 1] == f"configs/{path.name}"
    argv[argv.index("--config") + 1] = str(path)
    args = build_parser().parse_args(argv)
    config_cls = getattr(args, "config_cls", None)
    if config_cls is None:
        from scan_fast.demo.main_job import MainJobConfig as config_cls
    cfg = config_from_args(args, config_cls)
    if hasattr(cfg, "validate"):
        cfg.validate()
    for name, value in read_config_file(str(path)).items():  # every key reached the config as written
        got = getattr(cfg, name)
        assert (tuple(got) if isinstance(value, list) else got) == (tuple(value) if isinstance(value, list)
                                                                      else value), name


def test_the_demo_config_is_make_demos_job():
    from scan_fast.flags import config_values
    from scan_fast.demo.main_job import MainJobConfig

    path = next(p for p in CONFIGS if p.name == "demo.yaml")
    assert MainJobConfig(**config_values(str(path), MainJobConfig)) == MainJobConfig()


def test_a_bad_config_value_is_one_line_naming_the_flag(tmp_path):
    from scan_fast.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train_data: x.beton\nprecision: fp8\n")
    assert main(["train", "clip", "--config", str(bad)]) == 2
