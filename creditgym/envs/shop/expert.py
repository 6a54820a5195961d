"""A scripted Shop expert that knows the goal's target product; for tests and demonstration trajectories.

It searches like a careful shopper (the goal's attributes and product type), looks through the first
`pages_to_browse` result pages for the target, falls back to searching the target's exact title, then picks
the goal's options and buys. Use it as `expert = ShopExpert(); action = expert(env)` after each reset/step.
"""

from __future__ import annotations

import gymnasium as gym

from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.shop.goals import Goal
from creditgym.envs.shop.pages import BACK_TO_SEARCH, BUY, NEXT, PREV, option_labels


class ShopExpert:
    def __init__(self, *, pages_to_browse: int = 2) -> None:
        self.pages_to_browse = pages_to_browse
        self._goal: Goal | None = None
        self._searched = False

    def __call__(self, env: gym.Env) -> str:
        shop = env.unwrapped
        if not isinstance(shop, ShopEnv):
            raise TypeError(f"ShopExpert plays ShopEnv, got {type(shop).__name__}")
        goal, state = shop.goal, shop.state()
        if goal is not self._goal:
            self._goal, self._searched = goal, False
        target = goal.product_id
        page = state["page"]
        if page == "search":
            if self._searched:
                return f"search[{shop.catalog.product(shop.catalog.row_of(target)).title}]"
            self._searched = True
            return f"search[{' '.join(goal.attributes)} {goal.product_type}]"
        if page == "results":
            if target in state["results_on_page"]:
                return f"click[{target}]"
            if state["results_page"] < self.pages_to_browse and f"click[{NEXT}]" in shop.available_actions():
                return f"click[{NEXT}]"
            return f"click[{BACK_TO_SEARCH}]"
        if page == "item" and state["item"] == target:
            product = shop.catalog.product(shop.catalog.row_of(target))
            labels = {option: label for label, option in option_labels(product).items()}
            for name, value in goal.options.items():
                # A WebShop instruction may ask for two values of one option (black and white): the second is
                # kept under its own name, the product has no such option, and no click can satisfy it.
                if (name, value) in labels and state["chosen_options"].get(name) != value:
                    return f"click[{labels.get((name, value), value)}]"
            return f"click[{BUY}]"
        return f"click[{PREV}]"

