"""Static validation of LLM-written reward programs against an AST allow-list.

A program must define `compute_dense_reward(state, action, next_state)` at top level and return
`(total, {component: value})`. Only plain computation is allowed: no imports beyond `math`, no class
definitions, no access to names or attributes that start with an underscore, no strings containing a double
underscore, and none of the builtins that reach the interpreter or the file system. This is the first of the
sandbox's layers (see `sandbox.py`); it makes the common escapes fail fast with a readable message, while
the process-level limits contain anything it misses.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

ENTRY_POINT = "compute_dense_reward"
ENTRY_ARGS = ("state", "action", "next_state")
ALLOWED_MODULES = frozenset({"math"})

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Module, ast.FunctionDef, ast.Lambda, ast.arguments, ast.arg, ast.keyword,
    ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.Pass, ast.Break, ast.Continue,
    ast.Expr, ast.If, ast.For, ast.While, ast.Try, ast.ExceptHandler, ast.Raise, ast.Assert,
    ast.Import, ast.ImportFrom, ast.alias,
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.NamedExpr, ast.Call, ast.Starred,
    ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Constant, ast.JoinedStr, ast.FormattedValue,
    ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
    ast.comprehension,
    ast.Load, ast.Store, ast.Del,
    ast.boolop, ast.operator, ast.unaryop, ast.cmpop,
)

# Builtins that reach the interpreter, the file system or introspection; the sandbox's namespace lacks them
# too, but naming them is rejected here so the error says why.
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "globals", "locals", "vars", "dir", "getattr", "setattr", "delattr",
    "hasattr", "input", "breakpoint", "help", "memoryview", "type", "object", "super", "classmethod",
    "staticmethod", "property", "id", "exit", "quit", "copyright", "credits", "license",
})

# str.format / format_map resolve "{0.attr}" fields at run time, out of the AST's sight.
FORBIDDEN_ATTRIBUTES = frozenset({"format", "format_map", "mro"})
# Generator, coroutine, frame, traceback and code objects lead back to the worker's globals without dunders.
FORBIDDEN_ATTRIBUTE_PREFIXES = ("gi_", "cr_", "ag_", "f_", "tb_", "co_")

_TOP_LEVEL = (ast.FunctionDef, ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.Expr)


@dataclass(frozen=True)
class ValidationLimits:
    """Size limits for a program's source."""

    max_chars: int = 20_000
    """Longest accepted source, in characters."""
    max_nodes: int = 5_000
    """Most AST nodes."""
    max_constant_chars: int = 1_000
    """Longest string or bytes literal."""
    max_depth: int = 60
    """Deepest AST nesting (deeper trees can overflow the compiler's stack)."""

    def __post_init__(self) -> None:
        # A limit of 0 or less would reject every program, each with a message that blames the program.
        for name in ("max_chars", "max_nodes", "max_constant_chars", "max_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ValidationLimits.{name} must be a whole number of at least 1, got {value!r}")


def validate_program(source: str, limits: ValidationLimits | None = None) -> list[str]:
    """Every reason to reject `source`, as readable messages with line numbers; an empty list means it passed.

    >>> validate_program("def compute_dense_reward(state, action, next_state):\\n    return 1.0, {}")
    []
    >>> validate_program("import os\\ndef compute_dense_reward(s, a, n):\\n    return 0.0, {}")
    ["line 1: import of 'os' is not allowed (only math)"]
    """
    limits = limits or ValidationLimits()
    if not isinstance(source, str):
        return [f"program must be a str, got {type(source).__name__}"]
    if len(source) > limits.max_chars:
        return [f"program is {len(source)} characters long; the limit is {limits.max_chars}"]
    try:
        tree = ast.parse(source, filename="<reward program>")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        line = getattr(error, "lineno", None)
        where = f"line {line}: " if line else ""
        return [f"{where}syntax error: {getattr(error, 'msg', None) or error}"]
    nodes = list(ast.walk(tree))
    if len(nodes) > limits.max_nodes:
        return [f"program has {len(nodes)} syntax nodes; the limit is {limits.max_nodes}"]
    if _depth(tree) > limits.max_depth:
        return [f"program nests deeper than {limits.max_depth} levels"]
    errors = [f"line {getattr(node, 'lineno', '?')}: {message}"
              for node in nodes for message in _node_errors(node, limits)]
    errors += _structure_errors(tree)
    return errors


def _depth(node: ast.AST) -> int:
    # Iterative, so a deeply nested program cannot overflow this checker's own stack.
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _node_errors(node: ast.AST, limits: ValidationLimits) -> list[str]:
    if not isinstance(node, _ALLOWED_NODES):
        return [f"{type(node).__name__} is not allowed in reward programs"]
    if isinstance(node, ast.Import):
        return [f"import of {alias.name!r} is not allowed (only math)"
                for alias in node.names if alias.name not in ALLOWED_MODULES]
    if isinstance(node, ast.ImportFrom):
        if node.module not in ALLOWED_MODULES or node.level:
            return [f"import from {node.module!r} is not allowed (only math)"]
        return [f"import of {alias.name!r} from math is not allowed"
                for alias in node.names if alias.name == "*" or alias.name.startswith("_")]
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            return [f"names starting with an underscore are not allowed: {node.id!r}"]
        if node.id in FORBIDDEN_NAMES:
            return [f"{node.id!r} is not allowed in reward programs"]
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            return [f"attributes starting with an underscore are not allowed: {node.attr!r}"]
        if node.attr in FORBIDDEN_ATTRIBUTES or node.attr.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES):
            return [f"attribute {node.attr!r} is not allowed (use f-strings for formatting)"]
    if isinstance(node, (ast.FunctionDef, ast.Lambda)):
        args = node.args
        names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        bad = [name for name in names if name.startswith("_")]
        if bad:
            return [f"argument names starting with an underscore are not allowed: {bad}"]
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_"):
            return [f"function names starting with an underscore are not allowed: {node.name!r}"]
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            return ["decorators are not allowed"]
    if isinstance(node, ast.ExceptHandler) and node.name and node.name.startswith("_"):
        return [f"names starting with an underscore are not allowed: {node.name!r}"]
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        if len(node.value) > limits.max_constant_chars:
            return [f"a string literal of {len(node.value)} characters exceeds {limits.max_constant_chars}"]
        if (b"__" if isinstance(node.value, bytes) else "__") in node.value:
            return ["string literals containing '__' are not allowed"]
    return []


def _structure_errors(tree: ast.Module) -> list[str]:
    errors = [f"line {stmt.lineno}: only imports, functions and constant assignments may be at top level, "
              f"not {type(stmt).__name__}" for stmt in tree.body if not isinstance(stmt, _TOP_LEVEL)]
    entry = [stmt for stmt in tree.body if isinstance(stmt, ast.FunctionDef) and stmt.name == ENTRY_POINT]
    if not entry:
        return [*errors, f"program must define {ENTRY_POINT}{ENTRY_ARGS} at top level"]
    args = entry[-1].args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    needs_keywords = any(default is None for default in args.kw_defaults)
    takes_three = len(positional) >= 3 or args.vararg is not None
    if needs_keywords or required > 3 or not takes_three:
        errors.append(f"line {entry[-1].lineno}: {ENTRY_POINT} must take three positional arguments "
                      f"{ENTRY_ARGS}")
    return errors
