"""The seeded task generator: questions that need one to four dependent tool calls, with a reference plan.

Each family draws its inputs from `rng` and a world, then runs its reference plan through the real tools,
so the reference answer is exactly what a correct agent would compute. A plan is a list of turns; a turn
holds the calls that can run together (e.g. two independent inventory look-ups).

Splits hold out tasks. Families that read a world (inventories) hold out by world: the env draws test worlds
from a range train never uses. The other families (`WORLD_FREE`: arithmetic, conversions, dates) give the same
question and answer in any world, so a stable hash of the question decides its split instead: about one
question in `TEST_SHARE` is test-only, and the generator draws again until it gets one of its split.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from creditgym.envs.tooluse.tools import Call, run_tool
from creditgym.envs.tooluse.world import CITIES, COLORS, ITEMS, RATES, World

Plan = tuple[tuple[Call, ...], ...]
#: One world-free question in TEST_SHARE belongs to the test split.
TEST_SHARE = 8
#: Draws per task before giving up; every family needs only a few (the test split about TEST_SHARE on average).
MAX_DRAWS = 1000
_OTHER_CURRENCIES = {code: tuple(other for other in RATES if other != code) for code in RATES}
_CURRENCIES = tuple(RATES)


@dataclass(frozen=True)
class Task:
    family: str
    question: str
    answer: str | float
    """A number, an ISO date or a name."""
    plan: Plan
    world: int
    exact: bool = False
    """A count (days, weeks, items in stock): the answer must equal it, not be within 0.5% of it."""

    @property
    def num_calls(self) -> int:
        return sum(len(turn) for turn in self.plan)

    def answer_text(self) -> str:
        return _num(self.answer) if isinstance(self.answer, int | float) else self.answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family, "question": self.question, "answer": self.answer, "world": self.world,
            "plan": [[call.to_dict() for call in turn] for turn in self.plan], "exact": self.exact,
        }


class _Retry(Exception):
    """The drawn inputs make an ambiguous task (e.g. a price tie); draw again."""


def _num(value: float | int) -> str:
    return json.dumps(value)


def _date(rng: np.random.Generator) -> dt.date:
    return dt.date(2023, 1, 1) + dt.timedelta(days=_int(rng, 0, 3 * 365))


# Drawn through rng.random(), about three times cheaper than rng.integers per call; resets draw a lot.
def _int(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform in [low, high)."""
    return low + int(rng.random() * (high - low))


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def _pick(rng: np.random.Generator, values: list[Any] | tuple[Any, ...]) -> Any:
    return values[_int(rng, 0, len(values))]


def _other_currency(rng: np.random.Generator, currency: str) -> str:
    return _pick(rng, _OTHER_CURRENCIES[currency])


def _cheapest(rng: np.random.Generator, world: World) -> tuple[str, str, Call, dict[str, Any]]:
    """A store, a colour and the query for its cheapest item of that colour, with a unique cheapest row."""
    store, color = _pick(rng, world.stores), _pick(rng, COLORS)
    call = Call("query_inventory", {"store": store, "color": color, "order_by": "price", "limit": 1})
    rows = world.query(store=store, color=color, order_by="price", limit=2)
    if not rows or (len(rows) == 2 and rows[0].price == rows[1].price):
        raise _Retry
    return store, color, call, rows[0].to_dict()


def _stocked(rng: np.random.Generator, world: World) -> tuple[str, str, list[Any]]:
    """An item and colour sold by at least two stores, with those stores' rows."""
    row = _pick(rng, world.rows)
    rows = world.query(item=row.item, color=row.color)
    if len(rows) < 2:
        raise _Retry
    return row.item, row.color, rows


# -- families, by number of calls --------------------------------------------------------------------------
def percent(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    rate, base = _pick(rng, (5, 10, 12.5, 15, 17.5, 20, 25, 30, 40, 75)), _int(rng, 20, 5000)
    call = Call("calculator", {"expression": f"{base} * {_num(rate)} / 100"})
    return f"What is {_num(rate)}% of {base}?", run_tool(call, world)["result"], ((call,),)


_UNIT_QUESTIONS = {
    ("mi", "km"): "How many kilometers are in {v} miles?", ("km", "mi"): "How many miles are in {v} kilometers?",
    ("lb", "kg"): "How many kilograms is {v} pounds?", ("kg", "lb"): "How many pounds is {v} kilograms?",
    ("ft", "m"): "How many meters is {v} feet?", ("in", "cm"): "How many centimeters is {v} inches?",
    ("gal", "l"): "How many liters are in {v} gallons?", ("oz", "g"): "How many grams is {v} ounces?",
    ("c", "f"): "What is {v} degrees Celsius in Fahrenheit?", ("f", "c"): "What is {v} degrees Fahrenheit in Celsius?",
}


def units(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    (source, target), template = _pick(rng, list(_UNIT_QUESTIONS.items()))
    value = round(_uniform(rng, 1, 500), 1)
    call = Call("convert_units", {"value": value, "from_unit": source, "to_unit": target})
    return template.format(v=_num(value)), run_tool(call, world)["value"], ((call,),)


def currency(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    source = _pick(rng, _CURRENCIES)
    target, amount = _other_currency(rng, source), _int(rng, 10, 2000)
    call = Call("convert_currency", {"amount": amount, "from_currency": source, "to_currency": target})
    return f"How much is {amount} {source} in {target}?", run_tool(call, world)["amount"], ((call,),)


def date_shift(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    start, days = _date(rng).isoformat(), _int(rng, 2, 400)
    result = run_tool(call := Call("date_add", {"date": start, "days": days}), world)
    if rng.random() < 0.5:
        return f"What date is {days} days after {start}?", result["date"], ((call,),)
    return f"What day of the week is {days} days after {start}?", result["weekday"], ((call,),)


def date_span(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    first, second = sorted([_date(rng), _date(rng)])
    call = Call("date_diff", {"start_date": first.isoformat(), "end_date": second.isoformat()})
    question = f"How many days are there from {first.isoformat()} to {second.isoformat()}?"
    return question, run_tool(call, world)["days"], ((call,),)


def stock(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    row = _pick(rng, world.rows)
    call = Call("query_inventory", {"store": row.store, "item": row.item, "color": row.color})
    question = f"How many {row.color} {ITEMS[row.item][1]} does the {row.store} store have in stock?"
    return question, row.stock, ((call,),)


def cheapest_in_currency(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    store, color, query, row = _cheapest(rng, world)
    target = _other_currency(rng, CITIES[store])
    convert = Call("convert_currency", {"amount": row["price"], "from_currency": row["currency"],
                                        "to_currency": target})
    question = f"What does the cheapest {color} item in the {store} store cost in {target}?"
    return question, run_tool(convert, world)["amount"], ((query,), (convert,))


def cheapest_times(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    store, color, query, row = _cheapest(rng, world)
    units_wanted = _int(rng, 2, 13)
    multiply = Call("calculator", {"expression": f"{_num(row['price'])} * {units_wanted}"})
    question = (
        f"How much would {units_wanted} units of the cheapest {color} item in the {store} store cost, "
        "in the store's own currency?"
    )
    return question, run_tool(multiply, world)["result"], ((query,), (multiply,))


def whole_weeks(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    question, days, plan = date_span(rng, world)
    divide = Call("calculator", {"expression": f"{days} // 7"})
    question = question.replace("How many days", "How many whole weeks")
    return question, run_tool(divide, world)["result"], (*plan, (divide,))


def larger_stock(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    item, color, rows = _stocked(rng, world)
    first, second = rows[0], rows[1]
    if first.stock == second.stock:
        raise _Retry
    queries = tuple(Call("query_inventory", {"store": r.store, "item": item, "color": color}) for r in (first, second))
    question = f"Which store has more {color} {ITEMS[item][1]} in stock, {first.store} or {second.store}?"
    return question, max((first, second), key=lambda r: r.stock).store, (queries,)


def cheapest_total_in_currency(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    question, total, plan = cheapest_times(rng, world)
    source = CITIES[plan[0][0].arguments["store"]]
    target = _other_currency(rng, source)
    convert = Call("convert_currency", {"amount": total, "from_currency": source, "to_currency": target})
    question = question.replace("in the store's own currency?", f"in {target}?")
    return question, run_tool(convert, world)["amount"], (*plan, (convert,))


def shipping(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    source = _pick(rng, _CURRENCIES)
    pounds, per_kg = round(_uniform(rng, 1, 60), 1), round(_uniform(rng, 2, 15) * RATES[source], 2)
    target = _other_currency(rng, source)
    to_kg = Call("convert_units", {"value": pounds, "from_unit": "lb", "to_unit": "kg"})
    kilos = run_tool(to_kg, world)["value"]
    cost = Call("calculator", {"expression": f"{_num(kilos)} * {_num(per_kg)}"})
    convert = Call("convert_currency", {"amount": run_tool(cost, world)["result"], "from_currency": source,
                                        "to_currency": target})
    question = (
        f"A parcel weighs {_num(pounds)} lb and shipping costs {_num(per_kg)} {source} per kilogram. "
        f"What does shipping it cost in {target}?"
    )
    return question, run_tool(convert, world)["amount"], ((to_kg,), (cost,), (convert,))


def total_stock(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    item, color, rows = _stocked(rng, world)
    first, second = rows[0], rows[1]
    queries = tuple(Call("query_inventory", {"store": r.store, "item": item, "color": color}) for r in (first, second))
    add = Call("calculator", {"expression": f"{first.stock} + {second.stock}"})
    question = (
        f"How many {color} {ITEMS[item][1]} do the {first.store} and {second.store} stores have in stock together?"
    )
    return question, run_tool(add, world)["result"], (queries, (add,))


def total_with_tax(rng: np.random.Generator, world: World) -> tuple[str, Any, Plan]:
    question, converted, plan = cheapest_total_in_currency(rng, world)
    tax = _pick(rng, (5, 8, 10, 12, 15, 20, 25))
    with_tax = Call("calculator", {"expression": f"{_num(converted)} * (1 + {tax} / 100)"})
    question = question[:-1] + f", including {tax}% sales tax?"
    return question, run_tool(with_tax, world)["result"], (*plan, (with_tax,))


Family = Callable[[np.random.Generator, World], tuple[str, Any, Plan]]
#: Families by the number of calls in their reference plan.
FAMILIES: dict[int, tuple[Family, ...]] = {
    1: (percent, units, currency, date_shift, date_span, stock),
    2: (cheapest_in_currency, cheapest_times, whole_weeks, larger_stock),
    3: (cheapest_total_in_currency, shipping, total_stock),
    4: (total_with_tax,),
}
#: Families whose answer is a count, checked exactly: an off-by-one day count is the classic error, not rounding.
COUNTS: frozenset[Family] = frozenset({date_span, whole_weeks, stock, total_stock})
#: Families that never read the world; their split comes from `question_split`.
WORLD_FREE: frozenset[Family] = frozenset({percent, units, currency, date_shift, date_span, whole_weeks, shipping})
SPLITS = ("train", "test")


def question_split(question: str) -> str:
    """The split a world-free question belongs to: a stable hash (the same in every process and Python version)."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % TEST_SHARE == 0 else "train"


def generate_task(
    rng: np.random.Generator, world_index: int, *, min_calls: int = 1, max_calls: int = 4, split: str = "train"
) -> Task:
    """A task whose plan has between min_calls and max_calls calls (the count drawn uniformly); a world-free
    family draws again until its question belongs to `split` (see the module docstring)."""
    if not 1 <= min_calls <= max_calls <= max(FAMILIES):
        raise ValueError(f"need 1 <= min_calls <= max_calls <= {max(FAMILIES)}, got {min_calls}, {max_calls}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    world = World.get(world_index)
    family = _pick(rng, FAMILIES[_int(rng, min_calls, max_calls + 1)])
    for _ in range(MAX_DRAWS):
        try:
            question, answer, plan = family(rng, world)
        except _Retry:
            continue
        if family in WORLD_FREE and question_split(question) != split:
            continue
        return Task(family.__name__, question, answer, plan, world_index, exact=family in COUNTS)
    raise RuntimeError(
        f"task family {family.__name__!r} gave no usable {split} task in world {world_index} after {MAX_DRAWS} "
        "draws; its inputs are too few or too often ambiguous: widen its ranges or use another world"
    )
