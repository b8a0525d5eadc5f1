"""The command-line form of TrainConfig: one option per field (with its help text), values read as the field's type.

    parser = argparse.ArgumentParser(); add_config_options(parser)
    changes = options_to_changes(parser.parse_args(argv), sets=[])   # {field: value} of the options given
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import typing
from typing import Any

from ml.training.config import TrainConfig, check_field_names, field_types, is_optional, type_name


def parse_field_value(name: str, text: str) -> Any:
    """`text` read as the type of field `name` (ValueError naming the field when it is not of that type).

    Integers must be whole ('1.5' is refused), numbers finite, None is 'None' where allowed, a pair
    is 'a,b' or '(a, b)', a dict a Python literal.
    """
    types_ = field_types()
    if name not in types_:
        check_field_names({name: None})
    optional, base = is_optional(types_[name])
    origin = typing.get_origin(base) or base
    text = text.strip()
    if optional and text in ("None", "none", "null"):
        return None
    try:
        if origin is int:
            value = int(text)
        elif origin is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        elif origin is str:
            value = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
        elif origin is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = lowered in ("true", "1", "yes")
        elif origin is tuple:
            parsed = ast.literal_eval(text if text.startswith("(") or text.startswith("[") else f"({text})")
            value = tuple(float(v) for v in parsed)
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError
        elif origin is dict:
            value = ast.literal_eval(text)
            if not isinstance(value, dict):
                raise ValueError
        else:
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"{name} must be {type_name(types_[name])}, got {text!r}") from None
    return value


def option_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a field: its metadata's, else --name-with-dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with its help text; a given option replaces the preset's value.

    Values stay text here (default None: not given) and are read by `parse_field_value`.
    """
    group = parser.add_argument_group("recipe (each replaces the preset's value; also --set FIELD=VALUE)")
    for f in dataclasses.fields(TrainConfig):
        group.add_argument(option_flag(f), dest=f"cfg_{f.name}", metavar=f.name.upper(), default=None,
                           help=f"{f.metadata['help']} [{type_name(field_types()[f.name])}]")


def options_to_changes(args: argparse.Namespace, sets: list[str]) -> dict[str, Any]:
    """The fields given as options (and as --set FIELD=VALUE), each parsed as its field's type."""
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f"cfg_{f.name}", None)
        if text is not None:
            changes[f.name] = parse_field_value(f.name, text)
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        changes[name.strip()] = parse_field_value(name.strip(), text)
    return changes
