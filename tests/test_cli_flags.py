"""No flag is lost: every command's flags against the list they had when their help texts, choices and
checks moved beside the config fields (tests/cli_flags_before.json), and every flag of the commands
built from configs has a help text."""
import argparse
import json
from pathlib import Path

import pytest

BEFORE = json.loads((Path(__file__).parent / "cli_flags_before.json").read_text())
FROM_CONFIGS = ("scan-fast train clip", "scan-fast train moco", "scan-fast demo", "scan-fast eval",
                "scan-fast coreset export", "scan-fast simulate", "scan-fast losses", *(f"scan-fast data {name}" for name in (
                    "clip", "labelled", "moco", "index", "check", "manifest", "digits", "shapes")))


def _flags(parser, path=("scan-fast",), out=None):
    """{command: {flag: (help text, choices)}} for `parser` and all its subcommands."""
    out = {} if out is None else out
    entry = out.setdefault(" ".join(path), {})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _flags(child, path + (name,), out)
        elif not isinstance(action, argparse._HelpAction):
            for name in action.option_strings or [action.dest]:  # --x and --no-x of a bool flag alike
                entry[name] = (action.help or "", sorted(map(str, action.choices)) if action.choices else None)
    return out


@pytest.fixture(scope="module")
def now():
    from scan_fast.cli import build_parser

    return _flags(build_parser())


def test_every_command_keeps_every_flag_and_its_choices(now):
    assert set(BEFORE) <= set(now), f"commands lost: {sorted(set(BEFORE) - set(now))}"
    for command, flags in BEFORE.items():
        lost = sorted(set(flags) - set(now[command]))
        assert not lost, f"{command} lost {lost}"
        for name, before in flags.items():
            if before["choices"] is not None:  # a choice may be added, none lost
                gone = sorted(set(before["choices"]) - set(now[command][name][1] or ()))
                assert not gone, f"{command} {name} lost the choice(s) {gone}"
            if before["help"]:
                assert now[command][name][0], f"{command} {name} lost its help text"


@pytest.mark.parametrize("command", FROM_CONFIGS)
def test_every_flag_of_a_config_command_says_what_it_does(command, now):
    for name, (help_text, _) in now[command].items():
        words = help_text.split(" (default:")[0].strip()
        assert words, f"{command} {name} has no help text beyond its default"


def test_a_config_field_is_its_flag_with_its_literal_choices():
    from scan_fast.train.config import PRUNE_MODES, ClipConfig

    from scan_fast.flags import choices_of

    assert choices_of(ClipConfig, "prune") == tuple(PRUNE_MODES)
    with pytest.raises(ValueError, match="--precision must be one of .* got 'fp8'"):
        ClipConfig(train_data="x.beton", precision="fp8")
    with pytest.raises(ValueError, match="--prune must be one of .* got 'sometimes'"):
        ClipConfig(train_data="x.beton", prune="sometimes")
