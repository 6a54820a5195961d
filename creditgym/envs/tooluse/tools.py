"""The tools: OpenAI function-calling schemas, argument checks and implementations.

`check_arguments` enforces the schema (unknown tool, unknown or missing argument, wrong type): the env
treats a failure as an invalid action. `run_tool` may raise `ToolError` for a well-formed call that cannot
be answered (an unknown unit, a date that does not parse, a rejected calculator expression); the env
returns that error to the agent as the tool's result.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from creditgym.envs.tooluse.calculator import CalculatorError, calculate
from creditgym.envs.tooluse.world import MAX_QUERY_ROWS, ORDER_COLUMNS, RATES, UNIT_ALIASES, UNITS, World

_STRING = {"type": "string"}
_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Not strftime("%A"), which follows the process's locale.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


TOOL_SCHEMAS: tuple[dict[str, Any], ...] = (
    _function(
        "calculator",
        "Evaluate arithmetic: numbers, + - * / // % ** and parentheses, and abs, round, min, max, sqrt, floor, ceil.",
        {"expression": {**_STRING, "description": "e.g. '(189.5 * 3) - 12'"}},
        ["expression"],
    ),
    _function(
        "convert_units",
        "Convert a quantity between units of length (mm cm m km in ft yd mi), mass (mg g kg t oz lb), volume "
        "(ml l cup 'fl oz' gal) or temperature (c f k).",
        {
            "value": _NUMBER,
            "from_unit": {**_STRING, "description": "e.g. 'lb'"},
            "to_unit": {**_STRING, "description": "e.g. 'kg'"},
        },
        ["value", "from_unit", "to_unit"],
    ),
    _function(
        "convert_currency",
        f"Convert money between currencies at today's rates; known codes: {', '.join(RATES)}. Rounds to cents.",
        {
            "amount": _NUMBER,
            "from_currency": {**_STRING, "description": "ISO code, e.g. 'NOK'"},
            "to_currency": {**_STRING, "description": "ISO code, e.g. 'EUR'"},
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _function(
        "query_inventory",
        "Look up the store inventory database. Every filter is optional and matches exactly, ignoring case. "
        "Returns rows of store (a city), item, color, price (in the store's currency), currency and stock.",
        {
            "store": {**_STRING, "description": "the store's city, e.g. 'Oslo'"},
            "item": {**_STRING, "description": "singular item name, e.g. 'mug'"},
            "color": {**_STRING, "description": "e.g. 'red'"},
            "order_by": {**_STRING, "enum": list(ORDER_COLUMNS)},
            "descending": {"type": "boolean"},
            "limit": {**_INTEGER, "minimum": 1, "maximum": MAX_QUERY_ROWS},
        },
        [],
    ),
    _function(
        "date_add",
        "Add a number of days (negative to subtract) to a date; returns the new date and its weekday.",
        {"date": {**_STRING, "description": "YYYY-MM-DD"}, "days": _INTEGER},
        ["date", "days"],
    ),
    _function(
        "date_diff",
        "The number of days from start_date to end_date (negative when end_date is earlier).",
        {"start_date": {**_STRING, "description": "YYYY-MM-DD"}, "end_date": {**_STRING, "description": "YYYY-MM-DD"}},
        ["start_date", "end_date"],
    ),
)
TOOLS: dict[str, dict[str, Any]] = {schema["function"]["name"]: schema["function"] for schema in TOOL_SCHEMAS}


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}


class ToolError(ValueError):
    """A well-formed call the tool cannot answer; the message goes back to the agent."""


def check_arguments(call: Call) -> str | None:
    """Why `call` does not fit its tool's schema, or None when it does."""
    spec = TOOLS.get(call.name)
    if spec is None:
        return f"unknown tool {call.name!r}; the tools are {', '.join(TOOLS)}"
    properties = spec["parameters"]["properties"]
    for key in call.arguments:
        if key not in properties:
            return f"{call.name} has no argument {key!r}; its arguments are {', '.join(properties)}"
    for key in spec["parameters"]["required"]:
        if key not in call.arguments:
            return f"{call.name} needs the argument {key!r}"
    for key, value in call.arguments.items():
        problem = _type_problem(properties[key], value)
        if problem:
            return f"{call.name} argument {key!r} {problem}, got {value!r:.60}"
    return None


def _type_problem(schema: dict[str, Any], value: Any) -> str | None:
    kind = schema["type"]
    if kind == "string" and not isinstance(value, str):
        return "must be a string"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value)):
        return "must be a finite number"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int) or abs(value) > 10**12):
        return "must be an integer (at most 10**12 in size)"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be true or false"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']}"
    if "minimum" in schema and not schema["minimum"] <= value <= schema["maximum"]:
        return f"must be between {schema['minimum']} and {schema['maximum']}"
    return None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # JSON allows integers of up to 4,300 digits, far beyond a float's range
        return False


def run_tool(call: Call, world: World) -> Any:
    """Run a call that passed `check_arguments`; returns JSON-able data or raises `ToolError`."""
    args = call.arguments
    if call.name == "calculator":
        try:
            return {"result": calculate(args["expression"])}
        except CalculatorError as error:
            raise ToolError(f"calculator: {error}") from error
    if call.name == "convert_units":
        return convert_units(args["value"], args["from_unit"], args["to_unit"])
    if call.name == "convert_currency":
        return convert_currency(args["amount"], args["from_currency"], args["to_currency"])
    if call.name == "query_inventory":
        rows = world.query(**args)
        return [row.to_dict() for row in rows]
    if call.name == "date_add":
        try:
            date = _date(args["date"]) + dt.timedelta(days=args["days"])
        except OverflowError as error:
            raise ToolError("date_add: the resulting date is out of range") from error
        return {"date": date.isoformat(), "weekday": _WEEKDAYS[date.weekday()]}
    if call.name == "date_diff":
        return {"days": (_date(args["end_date"]) - _date(args["start_date"])).days}
    raise ToolError(f"unknown tool {call.name!r}")


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    source, target = _unit(from_unit), _unit(to_unit)
    if UNITS[source][0] != UNITS[target][0]:
        raise ToolError(
            f"convert_units: cannot convert {UNITS[source][0]} ({from_unit}) to {UNITS[target][0]} ({to_unit})"
        )
    if UNITS[source][0] == "temperature":
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[source]
        result = {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[target]
    else:
        result = value * UNITS[source][1] / UNITS[target][1]
    if not math.isfinite(result):
        raise ToolError("convert_units: the result is out of range")
    return {"value": round(result, 6), "unit": target}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    source, target = from_currency.strip().upper(), to_currency.strip().upper()
    for code in (source, target):
        if code not in RATES:
            raise ToolError(f"convert_currency: unknown currency {code!r:.20}; known: {', '.join(RATES)}")
    result = amount / RATES[source] * RATES[target]
    if not math.isfinite(result):
        raise ToolError("convert_currency: the result is out of range")
    return {"amount": round(result, 2), "currency": target}


def _unit(name: str) -> str:
    key = name.strip().lower()
    key = UNIT_ALIASES.get(key, UNIT_ALIASES.get(key.rstrip("s"), key))
    if key not in UNITS:
        raise ToolError(f"convert_units: unknown unit {name!r:.20}; known: {', '.join(UNITS)}")
    return key


def _date(text: str) -> dt.date:
    # Checked here because date.fromisoformat's accepted forms depend on the Python version ("20240101",
    # "2024-W01-1" parse on 3.11 only), and the tools must answer the same everywhere.
    stripped = text.strip()
    try:
        if not _ISO_DATE.fullmatch(stripped):
            raise ValueError(stripped)
        return dt.date.fromisoformat(stripped)
    except ValueError as error:
        raise ToolError(f"not a date in YYYY-MM-DD form: {text!r:.30}") from error
