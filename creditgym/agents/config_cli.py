"""Command-line flags generated from config dataclasses, with their field docstrings as help, plus YAML files.

A flag given on the command line wins over the YAML file, which wins over the dataclass default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

Config = TypeVar("Config")


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (CleanRL/tyro style)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = str(following.value.value).strip()
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                         aliases: dict[str, str] | None = None) -> None:
    """One `--field-name` flag per dataclass field (plus `aliases`); unset flags stay out of the namespace."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        flags = ["--" + field.name.replace("_", "-")]
        if aliases and field.name in aliases:
            flags.append(aliases[field.name])
        kind, optional = _base_type(hints[field.name])
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else field.default_factory()  # type: ignore[misc]
        # argparse %-formats help text: a literal "%" in a docstring ("80% success") must be escaped.
        help_text = f"{docs.get(field.name, field.name)} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif kind is dict:
            parser.add_argument(*flags, type=_json_dict, default=argparse.SUPPRESS, metavar="JSON",
                                help=help_text + "; a JSON object")
        else:
            help_text += "; 'none' to unset" if optional else ""
            parser.add_argument(*flags, type=_optional(kind) if optional else kind, default=argparse.SUPPRESS,
                                metavar=kind.__name__.upper(), help=help_text)


def config_from_args(cls: type[Config], args: argparse.Namespace, yaml_path: str | None = None) -> Config:
    """Dataclass defaults, then the YAML file, then the flags that were given."""
    values: dict[str, Any] = {}
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if yaml_path:
        values.update(load_yaml_config(yaml_path, names))
    values.update({name: value for name, value in vars(args).items() if name in names})
    return cls(**values)


def load_yaml_config(path: str | Path, names: set[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config file {path} has unknown keys {unknown}; valid keys: {sorted(names)}")
    return data


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the concrete type, whether None is allowed) for hints such as `float | None` or `dict[str, Any]`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0])[0], True
    if origin is not None:
        return origin, False
    return hint, False


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}); example: '{{\"split\": \"test\"}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"split\": \"test\"}'")
    return value
