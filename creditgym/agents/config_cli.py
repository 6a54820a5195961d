"""Command-line flags generated from config dataclasses, with their field docstrings as help, plus YAML files.

A flag given on the command line wins over the YAML file, which wins over the dataclass default.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import contextvars
import dataclasses
import inspect
import json
import math
import numbers
import os
import re
import textwrap
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
import yaml
from gymnasium.envs.registration import load_env_creator

from creditgym.envs import check_env_id

Config = TypeVar("Config")
#: The largest seed every generator takes: torch seeds are 64-bit, and trainers seed some streams with seed + 1.
MAX_SEED = 2**63 - 1


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
                         aliases: dict[str, str] | None = None, also: tuple[str, type] | None = None) -> None:
    """One `--field-name` flag per dataclass field (plus `aliases`); unset flags stay out of the namespace. `also`
    (label, another config class) adds that class's default to the help where it shares the flag with another
    default, and its own description where that differs, e.g. ("LLM algos", LLMTrainConfig) for PPO's flags."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    others = {} if also is None else {field.name: _default(field) for field in dataclasses.fields(also[1])}
    other_docs = {} if also is None else field_docs(also[1])
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        flags = ["--" + field.name.replace("_", "-")]
        if aliases and field.name in aliases:
            flags.append(aliases[field.name])
        kind, optional = _base_type(hints[field.name])
        default = _default(field)
        doc = docs.get(field.name, field.name)
        other_doc = other_docs.get(field.name, doc)
        if also is not None and field.name in others and other_doc != doc:  # the flag means something else there
            help_text = (_with_default(doc, default) + f". {also[0]}: "
                         + _with_default(other_doc, others[field.name]))
        else:
            other = (f"; {also[0]}: {others[field.name]}" if also is not None and field.name in others
                     and others[field.name] != default else "")
            help_text = _with_default(doc, default, other)
        # argparse %-formats help text: a literal "%" in a docstring ("80% success") must be escaped.
        help_text = help_text.replace("%", "%%")
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


def _with_default(doc: str, default: Any, extra: str = "") -> str:
    return doc if "(default:" in doc else f"{doc} (default: {default}{extra})"


def _default(field: dataclasses.Field) -> Any:
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]


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
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a folder; --config takes a YAML file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start}); --config takes "
                         "a YAML file of field: value lines") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config file {path} has unknown keys {unknown}; valid keys: {sorted(names)}")
    return data


def check_run_config(config: Any) -> None:
    """The checks every training config shares: field types, the device, seed and checkpoint cadence."""
    check_field_types(config)
    name = type(config).__name__
    check_device(config.device)
    if config.seed < 0:
        raise ValueError(f"{name}.seed must be 0 or more (gymnasium's rule), got {config.seed}")
    if config.seed > MAX_SEED:
        raise ValueError(f"{name}.seed must be at most 2**63 - 1 (torch seeds are 64-bit), got {config.seed}")
    if config.checkpoint_every < 0:
        raise ValueError(f"{name}.checkpoint_every must be 0 (only at the end) or more, got {config.checkpoint_every}")
    check_run_folder(name, config.runs_dir, config.run_name)


def check_run_folder(owner: str, runs_dir: str, run_name: str | None) -> None:
    """run_name a plain folder name (anything else would put the run in runs_dir itself or outside it, beside other
    runs' files), and runs_dir not a file (found before a model loads, not when the first result is written)."""
    if run_name is not None and (Path(run_name).name != run_name or run_name in ("", ".", "..")):
        raise ValueError(f"{owner}.run_name must be a plain folder name such as 'sokoban-spa-s1', got {run_name!r}; "
                         "choose where runs go with runs_dir (--runs-dir)")
    if Path(runs_dir).expanduser().is_file():
        raise ValueError(f"{owner}.runs_dir {runs_dir!r} is a file; runs_dir (--runs-dir) is the folder runs go in")


def check_env_arguments(env_id: str, env_kwargs: dict[str, Any], *, batched: bool) -> None:
    """A registered id, and no keyword arguments its constructor does not take, before any env is built.

    `batched` checks the creditgym batched env (`vector_entry_point`) that PPO steps where the id has one.
    """
    if ":" in env_id:  # "module:Env-v0" registers on import
        return
    check_env_id(env_id)
    spec = gym.spec(env_id)
    entry_point = spec.vector_entry_point if batched and spec.vector_entry_point else spec.entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    parameters = inspect.signature(creator).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(env_kwargs) - set(parameters))
    if unknown:
        known = sorted(name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        raise ValueError(f"env_kwargs {unknown} are not arguments of {env_id} "
                         f"({getattr(creator, '__name__', creator)}); it takes {known}")
    hints = _argument_hints(creator)
    for name, value in env_kwargs.items():
        if name in hints and not _fits(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise ValueError(f"env_kwargs {name}={shown} does not fit {env_id}: {name} takes "
                             f"{_describe_hint(hints[name])}")


def _argument_hints(creator: Any) -> dict[str, Any]:
    """The type hints of a constructor's arguments, or none where they cannot be resolved (the env checks then)."""
    try:
        return typing.get_type_hints(creator.__init__ if isinstance(creator, type) else creator)
    except Exception:  # hints naming what only type checkers import; nothing to check against
        return {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` can be passed where `hint` is declared; True for hints this cannot check (protocols, ...).

    JSON gives booleans, numbers, strings, lists, objects and null, and a boolean is no number here (YAML's `yes`).
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == option and type(value) is type(option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    kind = origin or hint
    if not isinstance(kind, type) or kind is object:
        return True
    if kind is bool:
        return isinstance(value, bool | np.bool_)
    if isinstance(value, bool | np.bool_):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    if issubclass(kind, PurePath):
        return isinstance(value, str | os.PathLike)
    if kind in (Sequence, list, tuple) and isinstance(value, str):
        return False
    try:
        return isinstance(value, kind)
    except TypeError:  # protocols that are not runtime-checkable
        return True


def _describe_hint(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe_hint(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "null (None)"
    kind = origin or hint
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if kind in names:
        return names[kind]
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return "a path"
    if isinstance(kind, type) and issubclass(kind, Mapping):
        return "a mapping (a JSON object)"
    if isinstance(kind, type) and issubclass(kind, Sequence):
        return "a list"
    return f"a {getattr(kind, '__name__', kind)}"


def check_learning_rates(config: Any, *names: str) -> None:
    """Each named learning rate (None allowed: a method's default) in (0, 1]: Adam moves each weight by about the
    learning rate per step, so anything above 1 (a typo such as 1e6 for 1e-6) throws the weights away while staying
    finite, where no non-finite check would stop it."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1] (Adam moves each weight by about this much a step), got "
                             f"{value:g}; typical values are 1e-5 to 1e-2")


#: The largest weight of a loss term: far above any useful one (0.5 to 1 for the value loss, 0 to 0.1 for entropy and
#: KL), and far below float32's range, past which the loss overflows.
MAX_LOSS_WEIGHT = 100.0


def check_coefficients(config: Any) -> None:
    """The policy-loss settings every trainer shares: clip_coef in (0, 1], max_grad_norm positive, and each loss
    weight it has (ent_coef, vf_coef, kl_coef) in [0, MAX_LOSS_WEIGHT]. Past float32's range (such as 1e300) they
    would fail deep inside the update, and short of it a huge weight drowns the policy loss."""
    if not 0 < config.clip_coef <= 1:
        raise ValueError(f"clip_coef (--clip-coef) must be in (0, 1], got {config.clip_coef:g}: the policy ratio is "
                         "clipped to [1 - clip_coef, 1 + clip_coef], and a ratio is never below 0; typical values are "
                         "0.1 to 0.3")
    if not config.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm (--max-grad-norm) must be positive, got {config.max_grad_norm:g}; typical "
                         "values are 0.5 to 1")
    for name in ("ent_coef", "vf_coef", "kl_coef"):
        value = getattr(config, name, None)
        if value is not None and not 0 <= value <= MAX_LOSS_WEIGHT:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) is a loss weight: use 0 to {MAX_LOSS_WEIGHT:g}, "
                             f"got {value:g}")


_SAVED_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("saved_run", default=None)


@contextlib.contextmanager
def saved_run_config(source: str | PurePath) -> Iterator[None]:
    """Build configs from a finished run's record (`source`, for messages): settings that do nothing where they are
    set (`check_unused_options`, `check_method_options`) warn instead of being refused. They did nothing when the
    run trained either, and runs from before these checks existed hold them (the examples passed every option to
    every variant), so refusing them would lock those runs out of eval and resume."""
    token = _SAVED_RUN.set(str(source))
    try:
        yield
    finally:
        _SAVED_RUN.reset(token)


def _refuse_unused(message: str) -> None:
    source = _SAVED_RUN.get()
    if source is None:
        raise ValueError(message)
    warnings.warn(f"{source}: {message.split('; ')[0]}. It did nothing when the run trained and is ignored now too",
                  stacklevel=4)


def check_unused_options(config: Any, names: Sequence[str], *, applies: bool, needs: str, flag: str) -> None:
    """Refuse the fields in `names` set away from their defaults where they would do nothing (`applies` False), as a
    silently ignored setting looks like one that was tried; `needs` says what makes them apply, e.g. "a shaping
    potential", and `flag` the flag that chooses it. Inside `saved_run_config` this warns instead."""
    if applies:
        return
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    changed = [name for name in names if getattr(config, name) != defaults[name]]
    if changed:
        shown = ", ".join(f"{name} (--{name.replace('_', '-')})" for name in changed)
        _refuse_unused(f"{shown} only appl{'ies' if len(changed) == 1 else 'y'} with {needs} ({flag}); pass {flag} "
                       f"too, or drop {'it' if len(changed) == 1 else 'them'}")


def learned_reward_scale_hint(config: Any) -> str:
    """What to lower when a learned reward overflowed: its own scale (beta of the implicit PRMs, SPA's grounding
    reward), the learning rate of its model and the coefficient over it, with their current values."""
    method = config.learned_reward
    own = (f"--prm-beta (now {config.prm_beta:g}), " if method in ("prime", "oprl")
           else f"--spa-grounding (now {config.spa_grounding:g}), " if method == "spa" and config.spa_grounding
           else "")
    return (f"lower {own}--learned-reward-lr (now {config.learned_reward_lr:g}) or --learned-reward-coef (now "
            f"{config.learned_reward_coef:g})")


def check_method_options(config: Any, owners: dict[str, tuple[str, ...]]) -> None:
    """Refuse a learned-reward setting changed from its default where `config.learned_reward` is a method that does
    not read it (`owners`: field -> the methods that do), such as SPA's grounding reward on an implicit PRM. Inside
    `saved_run_config` this warns instead."""
    method = config.learned_reward
    if method is None:
        return
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    for name, methods in owners.items():
        if method not in methods and getattr(config, name) != defaults[name]:
            _refuse_unused(f"{name} (--{name.replace('_', '-')}) only applies to learned_reward "
                           f"{' or '.join(methods)}, and this run's is {method}, which does not read it; drop it")


def absolute_level_paths(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`env_kwargs` with a relative `levels` path that exists from here (a Boxoban file or folder) made absolute, so
    that a later eval or resume started in another folder plays the same levels. A shipped bank name such as
    "6x6-1b" (which the Sokoban envs look up before any path) and a path that does not exist stay as given."""
    levels = env_kwargs.get("levels")
    if not isinstance(levels, str | PurePath) or not str(levels).strip():
        return env_kwargs
    from creditgym.envs.sokoban.bank import bank_names

    if isinstance(levels, str) and levels in bank_names():
        return env_kwargs
    path = Path(levels).expanduser()
    if path.is_absolute() or not path.exists():
        return env_kwargs
    return {**env_kwargs, "levels": str(path.resolve())}


def check_device(device: str) -> None:
    """auto, cpu or cuda[:N], and CUDA only where torch sees it."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device; use --device cpu or auto")


def check_field_types(config: Any) -> None:
    """Make each field of a config dataclass the type its hint names, or raise a ValueError that names the field.

    Configs come from flags, YAML files and resumed runs' JSON, and YAML is loose: PyYAML reads `1e-3` as a
    string and `16.5` stays a float, which would otherwise fail deep inside training. Strings are parsed as the
    command line parses them, whole floats become ints, and floats must be finite.
    """
    hints = typing.get_type_hints(type(config))
    name = type(config).__name__
    for field in dataclasses.fields(config):
        if not field.init:
            continue
        value = getattr(config, field.name)
        kind, optional = _base_type(hints[field.name])
        if value is None:
            if not optional:
                raise ValueError(f"{name}.{field.name} must be {_describe_kind(kind)}, not none")
            continue
        try:
            setattr(config, field.name, _coerce(value, kind))
        except (TypeError, ValueError):
            raise ValueError(f"{name}.{field.name} must be {_describe_kind(kind)}, got {value!r}") from None


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is int:
        if isinstance(value, str):
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)  # a string such as "1e-3", as on the command line
        if not math.isfinite(number):
            raise ValueError
        return number
    if kind in (str, dict, list, tuple) and not isinstance(value, kind):
        raise TypeError
    return value


def _describe_kind(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string",
            dict: "a mapping such as {\"rewards\": \"outcome\"}"}.get(kind, kind.__name__)


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
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}); example: '{{\"rewards\": \"outcome\"}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"rewards\": \"outcome\"}'")
    return value
