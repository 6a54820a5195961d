"""A safe calculator: arithmetic evaluated by walking Python's AST, never with eval or exec.

Only numbers, + - * / // % **, unary signs, parentheses and a few functions (`FUNCTIONS`) are allowed.
Anything else (names, attributes, strings, lambdas, comprehensions, `__import__`...) is rejected with a
`CalculatorError` that says why, and so are results and exponents large enough to exhaust CPU or memory.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

#: Bounds the size of the syntax tree, and so the work of evaluating it.
MAX_EXPRESSION_LENGTH = 200
MAX_MAGNITUDE = 1e15
MAX_EXPONENT = 64
#: round(x, n) builds 10**|n| as an integer, so a huge n would hang the env; beyond 15 digits a float has none left.
MAX_ROUND_DIGITS = 15


def _round(value: float, ndigits: float | None = None) -> float:
    if ndigits is None:
        return round(value)
    if not float(ndigits).is_integer() or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"the number of digits must be a whole number from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}")
    return round(value, int(ndigits))


FUNCTIONS: dict[str, Callable[..., float]] = {
    # min and max take their numbers one by one, so min(5) is 5 rather than Python's "'int' object is not iterable".
    "abs": abs, "round": _round, "min": lambda *values: min(values), "max": lambda *values: max(values),
    "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message is shown to the agent."""


def calculate(expression: str) -> float | int:
    """Evaluate an arithmetic expression; integral results come back as int, others rounded to 10 decimals."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise CalculatorError(f"could not parse {expression!r} as arithmetic") from error
    value = _evaluate(tree.body)
    if float(value).is_integer():
        return int(value)
    return round(float(value), 10)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; only the constants {sorted(CONSTANTS)} are allowed")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right:g} is not allowed (at most {MAX_EXPONENT} in size)")
        if isinstance(node.op, ast.Pow) and left == 0 and right < 0:
            raise CalculatorError("division by zero (0 to a negative power)")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise CalculatorError("division by zero")
        try:
            value = _BINARY[type(node.op)](left, right)
        except (OverflowError, ValueError) as error:
            raise CalculatorError(f"cannot compute: {error}") from error
        return _checked(value)
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise CalculatorError(f"unknown function {_describe(node.func)}; allowed: {', '.join(FUNCTIONS)}")
        if node.keywords or not node.args or len(node.args) > 10:
            raise CalculatorError(f"{name}() takes 1 to 10 positional numbers")
        arguments = [_evaluate(arg) for arg in node.args]
        try:
            value = FUNCTIONS[name](*arguments)
        except (TypeError, ValueError, OverflowError) as error:
            raise CalculatorError(f"{name}(): {error}") from error
        return _checked(value)
    raise CalculatorError(f"{type(node).__name__} is not allowed; use numbers, + - * / // % ** and parentheses")


def _checked(value: float) -> float:
    if isinstance(value, complex):  # Python's ** gives a complex number for a negative base and a fractional exponent
        raise CalculatorError("the result is not a real number (a negative number to a fractional power)")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"the result is out of range (more than {MAX_MAGNITUDE:g} in size)")
    return value


def _describe(node: ast.AST) -> str:
    return repr(node.id) if isinstance(node, ast.Name) else f"({type(node).__name__} expressions are not allowed)"
