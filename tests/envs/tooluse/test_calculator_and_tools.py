"""The safe calculator, the tool schemas, argument checks and tool implementations."""

from __future__ import annotations

import builtins

import pytest

from creditgym.envs.tooluse.calculator import CalculatorError, calculate
from creditgym.envs.tooluse.tools import TOOL_SCHEMAS, TOOLS, Call, ToolError, check_arguments, run_tool
from creditgym.envs.tooluse.world import ORDER_COLUMNS, World


@pytest.fixture(autouse=True)
def no_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec must never be called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("189.5 * 3", 568.5), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 10", 1024),
     ("-3 + +5", 2), ("0.1 + 0.2", 0.3), ("sqrt(16) + abs(-2)", 6), ("round(2.345, 2)", 2.35),
     ("round(1234, -2)", 1200), ("round(2.5)", 2), ("round(7, 15)", 7), ("max(1, 9, 3)", 9),
     ("min(5)", 5), ("max(-2.5)", -2.5),  # the schema says 1 to 10 numbers; one used to raise "not iterable"
     ("1_000 / 8", 125), ("2 * pi", 6.2831853072)],
)
def test_arithmetic(expression: str, expected: float) -> None:
    assert calculate(expression) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('ls')", "unknown function"),
        ("10**10**10", "exponent"),
        ("9**9**9", "exponent"),
        ("2 ** 1000", "exponent"),
        ("10.0 ** 60", "out of range"),
        ("().__class__.__bases__", "not allowed"),
        ("'a' * 10", "only numbers"),
        ("[1] * 10**9", "List is not allowed"),
        ("lambda: 0", "Lambda is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "sqrt()"),
        # These three used to say "out of range", "exponent -1 is not allowed" and "'int' object is not iterable".
        ("(-8) ** 0.5", "not a real number (a negative number to a fractional power)"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("0 ** -1", "division by zero (0 to a negative power)"),
        ("1 +", "could not parse"),
        ("1" * 300, "longer than"),
        ("max(x=1)", "positional"),
        ("True + 1", "only numbers"),
        ("(" * 150 + "1" + ")" * 150, "longer than"),
        # Python's round(1, -n) builds 10**n: without a bound on n this hung the env for good.
        ("round(1, -10**15)", "round(): the number of digits"),
        ("round(1, 16)", "round(): the number of digits"),
        ("round(1, 0.5)", "round(): the number of digits"),
    ],
)
def test_hostile_or_broken_input_is_rejected_with_a_reason(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calculate(expression)


def test_schemas_are_openai_function_schemas() -> None:
    assert [schema["function"]["name"] for schema in TOOL_SCHEMAS] == list(TOOLS)
    for schema in TOOL_SCHEMAS:
        assert schema["type"] == "function"
        parameters = schema["function"]["parameters"]
        assert parameters["type"] == "object" and set(parameters["required"]) <= set(parameters["properties"])
        assert all("type" in spec for spec in parameters["properties"].values())
        assert schema["function"]["description"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (Call("search_web", {"q": "x"}), "unknown tool 'search_web'"),
        (Call("calculator", {}), "needs the argument 'expression'"),
        (Call("calculator", {"expression": "1", "precision": 2}), "no argument 'precision'"),
        (Call("calculator", {"expression": 12}), "must be a string"),
        (Call("convert_units", {"value": "12", "from_unit": "lb", "to_unit": "kg"}), "must be a finite number"),
        (Call("convert_units", {"value": True, "from_unit": "lb", "to_unit": "kg"}), "must be a finite number"),
        (Call("date_add", {"date": "2024-01-01", "days": 1.5}), "must be an integer"),
        (Call("query_inventory", {"order_by": "price; DROP TABLE inventory"}), "must be one of"),
        (Call("query_inventory", {"limit": 500}), "between 1 and 20"),
        (Call("query_inventory", {"descending": "yes"}), "true or false"),
    ],
)
def test_argument_checks(call: Call, message: str) -> None:
    assert message in check_arguments(call)


def test_tools_compute_and_errors_are_tool_errors() -> None:
    world = World.get(0)
    assert run_tool(Call("convert_units", {"value": 1, "from_unit": "mi", "to_unit": "km"}), world)["value"] == 1.609344
    boiling = Call("convert_units", {"value": 100, "from_unit": "C", "to_unit": "fahrenheit"})
    assert run_tool(boiling, world)["value"] == 212
    assert run_tool(Call("convert_currency", {"amount": 92, "from_currency": "eur", "to_currency": "USD"}), world) == {
        "amount": 100.0, "currency": "USD"}
    assert run_tool(Call("date_add", {"date": "2024-02-28", "days": 2}), world) == {"date": "2024-03-01",
                                                                                     "weekday": "Friday"}
    assert run_tool(Call("date_diff", {"start_date": "2024-01-01", "end_date": "2023-12-25"}), world) == {"days": -7}
    for call, message in [
        (Call("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "km"}), "cannot convert mass"),
        (Call("convert_units", {"value": 1, "from_unit": "parsec", "to_unit": "km"}), "unknown unit"),
        (Call("convert_currency", {"amount": 1, "from_currency": "XYZ", "to_currency": "USD"}), "unknown currency"),
        (Call("date_add", {"date": "next tuesday", "days": 1}), "YYYY-MM-DD"),
        (Call("date_add", {"date": "9999-12-31", "days": 10}), "out of range"),
        (Call("calculator", {"expression": "__import__('os')"}), "calculator: unknown function"),
    ]:
        with pytest.raises(ToolError, match=message):
            run_tool(call, world)


def test_inventory_queries_filter_sort_and_resist_injection() -> None:
    world = World.get(0)
    store = world.stores[0]
    rows = run_tool(Call("query_inventory", {"store": store.upper(), "order_by": "price", "limit": 20}), world)
    assert rows and all(row["store"] == store for row in rows)
    assert [row["price"] for row in rows] == sorted(row["price"] for row in rows)
    expected = sorted((r for r in world.rows if r.store == store), key=lambda r: r.price)[0]
    assert rows[0]["price"] == expected.price and rows[0]["item"] == expected.item
    descending = run_tool(Call("query_inventory", {"order_by": "stock", "descending": True, "limit": 3}), world)
    assert descending[0]["stock"] == max(r.stock for r in world.rows) and len(descending) == 3
    assert run_tool(Call("query_inventory", {"store": f"{store}' OR '1'='1"}), world) == []
    assert len(run_tool(Call("query_inventory", {}), world)) == 20  # capped
    assert len(world.query(limit=20, store=store)) == len([r for r in world.rows if r.store == store][:20])


def test_remembered_query_answers_point_at_the_worlds_rows_not_copies() -> None:
    # A memo of 10,000 answers of up to 20 fresh rows each could hold about 80 MB per world, for 256 cached worlds.
    world = World(3)
    store = world.stores[1]
    for order_by in ORDER_COLUMNS:
        rows = world.query(store=store, order_by=order_by, limit=20)
        assert rows == sorted((r for r in world.rows if r.store == store),
                              key=lambda r: (getattr(r, order_by), r.store, r.item, r.color))[:20]
        assert all(any(row is own for own in world.rows) for row in rows)
    assert all(isinstance(answer, tuple) for answer in world._answers.values())
