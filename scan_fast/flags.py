"""Config dataclass fields that are command-line flags, each defined once.

A field made with `flag(default, help, section)` carries its help text and its argument group;
its annotation gives the type, `Literal[...]` the choices (checked by `check_choices`, which a
config's `__post_init__` calls), `Sequence[X]` a flag taking one or more X, `bool` a
--name/--no-name pair. `add_config_flags` turns a dataclass into argparse flags and
`config_from_args` back into the dataclass, over the values of a `--config` YAML or TOML file.
"""
import argparse
import collections.abc
import os
import typing
from dataclasses import MISSING, field, fields
from typing import Literal


def flag(default, help: str, section: str, default_factory=MISSING, required: bool = False,
         positional: bool = False):
    """A dataclass field that is also the flag --<name>, in argument group `section`; `required`: a flag the
    command cannot run without (its default is None), `positional`: an argument given without a name."""
    metadata = {"help": help, "section": section, "required": required, "positional": positional}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def redefault(config_cls, name: str, default):
    """The field `name` of `config_cls` with another default (a subclass's), its help and section kept."""
    return field(default=default, metadata=config_cls.__dataclass_fields__[name].metadata)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(annotation):
    """(scalar type, choices or None, is_sequence) of a field annotation: Optional[X] is X, Sequence[X]
    a flag taking one or more X, and Literal[...] a str (or int) flag with those choices."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:  # Optional[X]
        annotation = next(a for a in args if a is not type(None))
    many = typing.get_origin(annotation) in (collections.abc.Sequence, list, tuple)
    if many:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices, many
    return annotation, None, many


def choices_of(config_cls, name: str) -> tuple:
    """The Literal choices of field `name`."""
    return field_type(config_cls.__dataclass_fields__[name].type)[1]


def check_choices(config) -> None:
    """Every Literal field of `config` holds one of its choices (each item, for a Sequence field); a ValueError
    names the flag otherwise."""
    for f in fields(config):
        _, choices, many = field_type(f.type)
        value = getattr(config, f.name)
        if choices is None or value is None:
            continue
        for item in (value if many else (value,)):
            if item not in choices:
                raise ValueError(f"{option_name(f.name)} must be one of {choices}, got {item!r}")


def add_config_flags(parser, config_cls, section_order=()) -> None:
    """--config FILE, and one flag per field of the dataclass `config_cls` (each made with `flag`), in argument groups ordered by
    `section_order`, then by first use. Every flag defaults to None ("not given"), so that `config_from_args`
    keeps the dataclass's default, or a --config file's value, for the flags not given."""
    parser.add_argument("--config", help="YAML or TOML file holding any of the flags below, with the same names "
                                         "(dashes or underscores); flags on the command line win")
    add_field_flags(parser, config_cls, section_order)


def add_field_flags(parser, config_cls, section_order=()) -> None:
    """One flag per field of the dataclass `config_cls` (each made with `flag`), in argument groups ordered by
    `section_order`, then by first use; every flag defaults to None ("not given", see `config_from_args`)."""
    groups = {}
    for f in sorted(fields(config_cls), key=lambda f: _section_rank(f, section_order)):
        if "section" not in f.metadata:
            raise AssertionError(f"{config_cls.__name__}.{f.name} is not a flag() field")
        section = f.metadata["section"]
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        tp, choices, many = field_type(f.type)
        default = f.default if f.default is not MISSING else None
        if many and default is not None:
            default = " ".join(map(str, default))
        help_text = f.metadata["help"] + (f" (default: {default})" if default not in (None, "") else "")
        kwargs = dict(default=None, help=help_text)
        if f.metadata.get("positional"):
            groups[section].add_argument(f.name, type=tp, nargs="+" if many else None, help=help_text)
            continue
        if f.metadata.get("required"):
            kwargs["required"] = True
        if tp is bool:
            groups[section].add_argument(option_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if choices is not None:
            kwargs["choices"] = choices
        else:
            kwargs["metavar"] = f.name.upper()
        groups[section].add_argument(option_name(f.name), type=tp, nargs="+" if many else None, **kwargs)


def add_field_flag(parser, config_cls, name: str, **kwargs) -> None:
    """The flag of one field of `config_cls` for a command that is not a run (`scan-fast eval`): its type, choices
    and help text, and the field's default as the flag's (or kwargs' default); `kwargs` go to argparse (e.g. required=True)."""
    f = config_cls.__dataclass_fields__[name]
    tp, choices, many = field_type(f.type)
    default = kwargs.pop("default", None if f.default is MISSING else f.default)
    shown = "" if kwargs.get("required") or default in (None, "") else f" (default: {default})"
    extra = {"choices": choices} if choices is not None else {"metavar": name.upper()}
    parser.add_argument(option_name(name), type=tp, nargs="+" if many else None, default=default,
                        help=f.metadata["help"] + shown, **extra, **kwargs)


def _section_rank(f, section_order):
    section = f.metadata.get("section")
    return section_order.index(section) if section in section_order else len(section_order)


def read_config_file(path) -> dict:
    """Flag values from a YAML or TOML file: {field_name: value}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no file at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".toml"):
        import tomllib

        try:
            values = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err})") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(raw) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _config_value(path, name, value, annotation):
    """A config file's value as the field's type, or a TypeError naming the key."""
    tp, _, many = field_type(annotation)
    if value is None and type(None) in typing.get_args(annotation):
        return None
    if many:
        if not isinstance(value, list):
            raise TypeError(f"--config {path}: {name} must be a list of {tp.__name__}, got {value!r}")
        return tuple(_config_value(path, name, item, tp) for item in value)
    if (tp is bool) == isinstance(value, bool):  # true/false is neither a number nor a name
        if isinstance(value, tp):
            return value
        if tp is float and isinstance(value, int):
            return float(value)
        if tp is float and isinstance(value, str):
            try:  # PyYAML reads 5e-4 as a string (YAML 1.1 floats need a dot: 5.0e-4)
                return float(value)
            except ValueError:
                pass
    raise TypeError(f"--config {path}: {name} must be {tp.__name__}, got {value!r}")


def config_values(path, config_cls) -> dict:
    """The values of the config file `path` as `config_cls`'s field types; a ValueError names an unknown key."""
    by_name = {f.name: f for f in fields(config_cls)}
    from_file = read_config_file(path)
    unknown = sorted(set(from_file) - set(by_name))
    if unknown:
        raise ValueError(f"--config {path}: unknown key(s) {unknown}")
    return {name: _config_value(path, name, value, by_name[name].type) for name, value in from_file.items()}


def config_from_args(args, config_cls):
    """The config dataclass from parsed flags over the --config file's values."""
    values = config_values(args.config, config_cls) if getattr(args, "config", None) else {}
    for f in fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None:  # given on the command line
            values[f.name] = tuple(value) if isinstance(value, list) else value  # nargs="+" gives a list
    return config_cls(**values)
