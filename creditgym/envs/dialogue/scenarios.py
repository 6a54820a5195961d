"""Scenarios for the information-gathering dialogue: domains, their slots, and a seeded generator.

A domain (buying a laptop, planning a trip, booking a restaurant, renting an apartment) has seven slots. A
scenario picks the 3 to 6 of them the user actually cares about (the hidden profile), a value for each, a
vague opening line and the user's patience. Every value of a domain has a distinct surface form, so a
value mentioned in free text names exactly one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Slot:
    """One thing a user may care about.

    `keywords` are regular-expression fragments (matched on word boundaries, lower case) that make a
    question about this slot; `answer` is a template with `{value}`.
    """

    name: str
    label: str
    values: tuple[str, ...]
    keywords: tuple[str, ...]
    question: str
    answer: str


@dataclass(frozen=True)
class Domain:
    name: str
    topic: str
    openings: tuple[str, ...]
    slots: tuple[Slot, ...]

    def slot(self, name: str) -> Slot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(f"domain {self.name!r} has no slot {name!r}")


@dataclass(frozen=True)
class Scenario:
    """A user: the domain, the opening line, the hidden slot values (in the order the user would volunteer
    them) and how many questions the user answers before leaving."""

    domain: str
    opening: str
    hidden: dict[str, str]
    patience: int


# "how much" is left out on purpose: "how much RAM/storage" must not read as a question about price.
_PRICE = ("budget", r"price\w*", r"cost\w*", r"spend\w*", r"afford\w*", "money", "expensive", "pay")

DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain(
            name="laptop",
            topic="laptop",
            openings=(
                "Hi, I need a new laptop. Can you help me pick one?",
                "Hello! I'm shopping for a laptop but I'm not sure what to get.",
                "Hey, could you recommend a laptop for me?",
            ),
            slots=(
                Slot("budget", "budget", ("$500", "$800", "$1200", "$1600", "$2000"), (*_PRICE, r"cheap\w*"),
                     "What is your budget?", "My budget is about {value}."),
                Slot("use", "main use", ("gaming", "programming", "office work", "video editing", "school"),
                     ("use", "using", "usage", "purpose", "what for", "need it for"),
                     "What will you mainly use the laptop for?", "I'll mainly use it for {value}."),
                Slot("screen", "screen size", ("13 inch", "14 inch", "15 inch", "17 inch"),
                     (r"screens?", r"display\w*", "size", r"inch\w*", "big", "small"),
                     "What screen size do you want?", "I'd like a {value} screen."),
                Slot("os", "operating system", ("Windows", "macOS", "Linux", "ChromeOS"),
                     ("operating system", "os", "software", "platform"),
                     "Which operating system do you want?", "It should run {value}."),
                Slot("ram", "memory", ("8 GB", "16 GB", "32 GB", "64 GB"), ("ram", "memory"),
                     "How much RAM do you need?", "I need {value} of RAM."),
                Slot("storage", "storage", ("256 GB", "512 GB", "1 TB", "2 TB"),
                     ("storage", "disk", r"drives?", "ssd", "space"),
                     "How much storage do you need?", "I need {value} of storage."),
                Slot("battery", "battery life", ("6 hours", "10 hours", "14 hours", "18 hours"),
                     ("battery", r"charg\w*", "unplugged", "hours"),
                     "How long should the battery last?", "The battery should last at least {value}."),
            ),
        ),
        Domain(
            name="trip",
            topic="trip",
            openings=(
                "Hi, I want to plan a trip. Can you help?",
                "Hello! I'd like to get away for a while, could you organise something?",
                "Hey, I need help planning a vacation.",
            ),
            slots=(
                Slot("destination", "destination", ("Lisbon", "Tokyo", "Rome", "Vancouver", "Marrakech"),
                     ("destination", "where", "city", "country", "visit", "go to"),
                     "Where would you like to go?", "I want to go to {value}."),
                Slot("month", "travel month", ("March", "June", "September", "December"),
                     ("when", "month", r"dates?", "time of year", "season", r"depart\w*", "leave"),
                     "When do you want to travel?", "I'd like to travel in {value}."),
                Slot("nights", "length of the trip", ("3 nights", "5 nights", "7 nights", "10 nights"),
                     ("how long", r"nights?", r"days?", "duration", "length", r"weeks?"),
                     "How long do you want to stay?", "I want to stay {value}."),
                Slot("budget", "budget", ("$1000", "$2500", "$4000", "$6000"), (*_PRICE, r"cheap\w*"),
                     "What is your budget for the trip?", "My total budget is {value}."),
                Slot("travellers", "group size", ("1 person", "2 people", "3 people", "4 people"),
                     ("who", "people", "person", "group", "alone", r"companions?", "with you", "party"),
                     "How many people are travelling?", "It's for {value}."),
                Slot("lodging", "accommodation", ("hotel", "hostel", "apartment", "campsite"),
                     ("lodging", r"accommodations?", "sleep", "room", "place to stay", "stay at", "stay in"),
                     "What kind of accommodation do you prefer?", "I'd like to stay in a {value}."),
                Slot("transport", "transport", ("plane", "train", "car", "bus"),
                     (r"transport\w*", "travel by", "get there", "fly", r"flights?", r"driv\w*", "ride"),
                     "How do you want to get there?", "I want to get there by {value}."),
            ),
        ),
        Domain(
            name="restaurant",
            topic="dinner reservation",
            openings=(
                "Hi, can you book a restaurant for me?",
                "Hello, I'd like to go out for dinner. Could you find a place?",
                "Hey, I need a dinner reservation.",
            ),
            slots=(
                Slot("cuisine", "cuisine", ("Italian", "Japanese", "Mexican", "Indian", "Thai"),
                     ("cuisine", "food", "kind of restaurant", "type of restaurant", r"dish\w*", "eat"),
                     "What kind of food would you like?", "I'm in the mood for {value} food."),
                Slot("party", "party size", ("2 guests", "4 guests", "6 guests", "8 guests"),
                     (r"guests?", "people", "party", "how many", "group", "table for"),
                     "How many guests will there be?", "The table is for {value}."),
                Slot("day", "day", ("Friday", "Saturday", "Sunday", "Monday"),
                     ("day", "date", "when", "which night"),
                     "Which day would you like to go?", "I'd like to go on {value}."),
                Slot("time", "time", ("6 pm", "7 pm", "8 pm", "9 pm"),
                     ("time", "what time", "hour", "o'clock", "early", "late"),
                     "What time would you like the table?", "We'd like to eat at {value}."),
                Slot("price", "price range", ("cheap", "moderate", "upscale"), (*_PRICE, "fancy"),
                     "What price range are you looking for?", "Something {value}, price-wise."),
                Slot("seating", "seating", ("indoor", "outdoor", "bar"),
                     (r"seat\w*", "sit", "inside", "outside", "terrace", "patio"),
                     "Where would you like to sit?", "We'd prefer {value} seating."),
                Slot("diet", "dietary needs", ("vegetarian", "vegan", "gluten-free", "halal"),
                     (r"diet\w*", r"allerg\w*", r"restrictions?", r"intoleran\w*"),
                     "Does anyone have dietary needs?", "We need {value} options."),
            ),
        ),
        Domain(
            name="apartment",
            topic="apartment",
            openings=(
                "Hi, I'm looking for an apartment to rent.",
                "Hello! I need to find a new place to live.",
                "Hey, can you help me find a flat?",
            ),
            slots=(
                Slot("area", "neighbourhood", ("the city center", "the suburbs", "the university district",
                                               "the waterfront"),
                     ("area", r"neighbou?rhoods?", "location", "where", "part of town", "district"),
                     "Which area do you want to live in?", "I want to live in {value}."),
                Slot("bedrooms", "size", ("studio", "1 bedroom", "2 bedrooms", "3 bedrooms"),
                     (r"bedrooms?", r"rooms?", "how big", "size"),
                     "How many bedrooms do you need?", "Size-wise, I'm after: {value}."),
                Slot("rent", "rent", ("$900", "$1300", "$1800", "$2500"), ("rent", *_PRICE, r"cheap\w*"),
                     "What monthly rent can you afford?", "I can pay up to {value} a month."),
                Slot("move_in", "move-in month", ("April", "May", "June", "July"),
                     (r"mov\w*", "when", r"start\w*", "available"),
                     "When do you want to move in?", "I want to move in during {value}."),
                Slot("pets", "pets", ("a cat", "a dog", "no pets"), (r"pets?", r"animals?"),
                     "Do you have any pets?", "I have {value}."),
                Slot("furnished", "furnishing", ("furnished", "unfurnished"),
                     (r"furniture", r"furnish\w*"),
                     "Do you need furniture in the apartment?", "I want it {value}."),
                Slot("floor", "floor", ("ground floor", "upper floor", "top floor"),
                     ("floor", "level", "stairs", "elevator", "lift", "high up"),
                     "Which floor would you prefer?", "I'd prefer the {value}."),
            ),
        ),
    )
}


def generate_scenario(
    rng: np.random.Generator,
    *,
    domains: Sequence[str] | None = None,
    min_slots: int = 3,
    max_slots: int = 6,
    patience_bonus: int = 2,
    tight_patience: bool = False,
) -> Scenario:
    """Draw a user from `rng`.

    Patience is the number of questions the user answers: the size of the domain's schema plus
    `patience_bonus` (enough to ask about every slot), or with `tight_patience` the number of hidden slots
    plus the bonus (so the agent must ask open or combined questions instead of enumerating the schema).
    """
    names = list(domains) if domains is not None else list(DOMAINS)
    domain = DOMAINS[names[int(rng.integers(len(names)))]]
    count = int(rng.integers(min_slots, max_slots + 1))
    chosen = rng.choice(len(domain.slots), size=count, replace=False)
    hidden = {}
    for index in chosen:
        slot = domain.slots[int(index)]
        hidden[slot.name] = slot.values[int(rng.integers(len(slot.values)))]
    opening = domain.openings[int(rng.integers(len(domain.openings)))]
    patience = (count if tight_patience else len(domain.slots)) + patience_bonus
    return Scenario(domain=domain.name, opening=opening, hidden=hidden, patience=patience)


def check_domains(domains: dict[str, Domain]) -> None:
    """Raise ValueError if a domain is ambiguous: slots with clashing names, too few slots, or two values
    with the same normalised surface form."""
    from creditgym.envs.dialogue.text import normalize_value

    for domain in domains.values():
        names = [slot.name for slot in domain.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"domain {domain.name!r} repeats a slot name")
        seen: dict[str, str] = {}
        for slot in domain.slots:
            for value in slot.values:
                key = normalize_value(value)
                if key in seen:
                    raise ValueError(f"domain {domain.name!r}: {value!r} ({slot.name}) clashes with {seen[key]}")
                seen[key] = slot.name
