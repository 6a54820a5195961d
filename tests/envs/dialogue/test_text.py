"""Message parsing and slot/value matching for the information-gathering dialogue."""

from __future__ import annotations

import pytest

from creditgym.envs.dialogue.scenarios import DOMAINS, Domain, Slot, check_domains
from creditgym.envs.dialogue.text import (
    MAX_MESSAGE_CHARS,
    Invalid,
    Proposal,
    Question,
    domain_index,
    normalize_value,
    parse_action,
)

LAPTOP = [slot.name for slot in DOMAINS["laptop"].slots]


@pytest.mark.parametrize(
    "text",
    ["What is your budget?", "  how much RAM?  ", "Tell me about the OS? Thanks.", "hm, any pets?"],
)
def test_questions(text: str) -> None:
    assert parse_action(text, LAPTOP) == Question(text.strip())


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('<propose>{"budget": "$800", "os": "Linux"}</propose>', {"budget": "$800", "os": "Linux"}),
        ('I think this fits: <PROPOSE> {"ram": 16} </Propose> ok?', {"ram": 16}),
        ('<propose>{"screen": 13.0}</propose>', {"screen": 13.0}),
    ],
)
def test_proposals(text: str, values: dict) -> None:
    assert parse_action(text, LAPTOP) == Proposal(values)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "I want to know your budget.",  # a statement, not a question
        "??? !!!",  # no word
        "é" * 50,
        '{"json": [1, 2]}',
        "<propose>{budget: 800}</propose>",  # bad JSON
        '<propose>{"budget": "$800"}',  # unclosed
        '<propose>{"budget": 1}</propose><propose>{"os": "Linux"}</propose>',  # two proposals
        '</propose>{"budget": 1}<propose>',  # reversed tags
        "<propose>[1, 2]</propose>",  # not an object
        "<propose>{}</propose>",  # empty
        '<propose>{"colour": "red"}</propose>',  # unknown slot
        '<propose>{"budget": [800]}</propose>',  # non-scalar
        '<propose>{"budget": true}</propose>',  # boolean
        '<propose>{"budget": null}</propose>',
        "What?" + "x" * MAX_MESSAGE_CHARS,  # too long
    ],
)
def test_invalid_messages(text: str) -> None:
    parsed = parse_action(text, LAPTOP)
    assert isinstance(parsed, Invalid), parsed
    assert parsed.reason


def test_non_strings_are_invalid() -> None:
    for value in (None, 3, b"What?", ["What?"]):
        assert isinstance(parse_action(value, LAPTOP), Invalid)


def test_normalize_value() -> None:
    assert normalize_value("$1,200") == normalize_value(1200) == normalize_value(1200.0) == "1200"
    assert normalize_value("16 GB") == normalize_value("16gb")
    assert normalize_value("the suburbs") == normalize_value("Suburbs")
    assert normalize_value("gluten-free") == normalize_value("Gluten Free")
    assert normalize_value("furnished") != normalize_value("unfurnished")


def test_mentions_order_values_and_choices() -> None:
    laptop = domain_index("laptop")
    assert laptop.mentions("What is your budget and which OS?") == [("budget", None), ("os", None)]
    assert laptop.mentions("You want Linux with 16 gb, right?") == [("os", "Linux"), ("ram", "16 GB")]
    assert laptop.mentions("Windows or Linux?") == [("os", None)]  # a choice is not a leading question
    assert laptop.mentions("How much RAM do you need?") == [("ram", None)]  # not read as a price question
    assert laptop.mentions("What is your favourite colour?") == []
    apartment = domain_index("apartment")
    assert apartment.values_in("No, not furnished. I want it unfurnished.") == {
        "furnished": ["furnished", "unfurnished"]
    }


def test_every_slot_question_names_its_own_slot_only() -> None:
    for domain in DOMAINS.values():
        for slot in domain.slots:
            assert domain_index(domain.name).mentions(slot.question) == [(slot.name, None)], slot.question


def test_domains_are_unambiguous_and_the_check_catches_clashes() -> None:
    check_domains(DOMAINS)
    clash = Domain(
        name="x",
        topic="x",
        openings=("hi",),
        slots=(Slot("a", "a", ("16 GB",), ("a",), "a?", "{value}"), Slot("b", "b", ("16gb",), ("b",), "b?", "{value}")),
    )
    with pytest.raises(ValueError, match="clashes"):
        check_domains({"x": clash})
