"""The procedural catalog, the SQLite/FTS5 search index and its on-disk cache."""

from __future__ import annotations

import gc
import os
import pickle
from itertools import combinations

import numpy as np
import pytest

from creditgym.envs.shop import index
from creditgym.envs.shop.catalog import generate_catalog, is_test_product
from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.shop.goals import generate_goal
from creditgym.envs.shop.index import ShopCatalog, query_terms
from creditgym.envs.shop.reward import words
from creditgym.envs.shop.taxonomy import CATEGORIES, OPTION_VALUES


@pytest.fixture(scope="module")
def catalog() -> ShopCatalog:
    return ShopCatalog.generated(0, 2000)


def test_generator_is_a_pure_function_of_seed_and_size() -> None:
    first, again, other = generate_catalog(3, 300), generate_catalog(3, 300), generate_catalog(4, 300)
    assert first == again
    assert [p.id for p in first] != [p.id for p in other]
    assert len({p.id for p in first}) == 300
    for product in first:
        assert product.product_type in product.title.lower()
        assert 2 <= len(product.attributes) <= 4
        assert all(attribute in product.description for attribute in product.attributes)
        assert all(2 <= len(values) <= 5 for values in product.options.values())
        assert product.price > 0 and round(product.price % 1, 2) == 0.99


def test_split_is_a_stable_tenth_of_products(catalog: ShopCatalog) -> None:
    train, test = catalog.goal_targets("train"), catalog.goal_targets("test")
    assert len(train) + len(test) == len(catalog) == 2000
    assert 0.05 < len(test) / len(catalog) < 0.15
    assert all(is_test_product(catalog.product(int(row)).id) for row in test[:50])
    assert not any(is_test_product(catalog.product(int(row)).id) for row in train[:50])


def test_search_ranks_title_matches_first(catalog: ShopCatalog) -> None:
    rows = catalog.search("snack bar")
    assert len(rows) == 40  # 2000 products spread evenly over 50 types; only snack bars say "snack" or "bar"
    assert all(catalog.product(row).product_type == "snack bar" for row in rows)
    assert catalog.search("zzzz qqqq") == []
    assert catalog.search("the and of") == []  # stop words only


def test_search_finds_the_goal_target(catalog: ShopCatalog) -> None:
    rng = np.random.default_rng(0)
    found_by_goal_words = found_by_instruction = 0
    precision = []
    targets = catalog.goal_targets("train")
    for row in targets[rng.choice(len(targets), 50, replace=False)]:
        product = catalog.product(int(row))
        goal = generate_goal(product, rng, "train")
        rows = catalog.search(f"{' '.join(goal.attributes)} {goal.product_type}")
        found_by_goal_words += int(row) in rows
        found_by_instruction += int(row) in catalog.search(goal.instruction)
        precision.append(np.mean([catalog.product(r).product_type == goal.product_type for r in rows[:10]]))
        assert row in catalog.search(product.title)[:5]
    assert found_by_goal_words >= 48 and found_by_instruction >= 48  # in the top 50, of 2,000 products
    assert np.mean(precision) >= 0.8  # the first page is mostly the wanted product type


def test_queries_are_sanitised_not_interpreted() -> None:
    assert query_terms('I NEED "gluten-free" snack* bar OR NEAR(x y) AND ^col:') == [
        "gluten", "free", "snack", "bar", "near", "x", "y", "col",
    ]


def test_hostile_queries_never_raise(catalog: ShopCatalog) -> None:
    for query in ['"', "AND OR NOT", "NEAR(", "title: x", "*", "a" * 5000, "é" * 100, "'; DROP TABLE products; --"]:
        catalog.search(query)
    assert len(catalog) == 2000


def test_catalog_is_cached_per_seed_and_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path))
    assert index.cache_dir() == tmp_path
    built = ShopCatalog.generated(7, 120)
    assert built.path.parent == tmp_path / "shop" and built.path.exists()
    mtime = built.path.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached catalog must not be rebuilt")

    monkeypatch.setattr(index, "build_index", no_rebuild)
    reopened = ShopCatalog.generated(7, 120)
    assert reopened.path == built.path and reopened.path.stat().st_mtime_ns == mtime
    assert len(reopened) == 120
    with pytest.raises(AssertionError, match="must not be rebuilt"):
        ShopCatalog.generated(8, 120)  # another seed is another file


def test_catalog_pickles_as_its_recipe(catalog: ShopCatalog) -> None:
    catalog.search("coffee")  # opens the connection, which must not be pickled
    payload = pickle.dumps(catalog)
    assert len(payload) < 500
    clone = pickle.loads(payload)
    assert clone.search("dark roast coffee") == catalog.search("dark roast coffee")


def test_no_two_option_values_of_a_product_type_match_in_the_reward() -> None:
    # score_purchase matches options by a word subset (WebShop's rule): x-small matched small, king matched
    # california king, and the wrong size earned the full reward on about 5% of v0's goals
    clashes = []
    for category in CATEGORIES:
        for product_type in category.types:
            values = [value for name in product_type.options for value in OPTION_VALUES[name]]
            for a, b in combinations(values, 2):
                if set(words(a)) <= set(words(b)) or set(words(b)) <= set(words(a)):
                    clashes.append((product_type.name, a, b))
    assert not clashes, clashes[:8]


def test_catalogs_no_env_uses_are_closed(tmp_path, monkeypatch) -> None:
    # Every catalog a process had opened kept its SQLite file open for ever: a sweep over 1,000 catalog seeds
    # ran out of file descriptors
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path))
    open_files = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    gc.collect()
    before = open_files()
    for seed in range(20):
        env = ShopEnv(num_products=60, catalog_seed=seed)
        env.reset(seed=0)
        env.step("search[black]")
        env.close()
        del env
    gc.collect()
    assert open_files() <= before + 1


def test_a_full_product_cache_drops_its_oldest_entry_not_everything(catalog: ShopCatalog, monkeypatch) -> None:
    # Emptying all 20,000 decoded products at once made every env on the catalog decode afresh together.
    monkeypatch.setattr(index, "_PRODUCT_CACHE_LIMIT", 3)
    monkeypatch.setattr(catalog, "_products", {})
    first = catalog.product(1)
    for row in (2, 3, 4):
        catalog.product(row)
    assert list(catalog._products) == [2, 3, 4]
    assert catalog.product(3) is catalog._products[3] and catalog.product(1) == first
    assert list(catalog._products) == [3, 4, 1]
