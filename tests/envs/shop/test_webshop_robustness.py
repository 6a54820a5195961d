"""Malformed WebShop data, damaged caches and hostile search queries: clear errors, never a raw traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from creditgym.envs.shop import index
from creditgym.envs.shop.catalog import generate_catalog
from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.shop.index import ShopCatalog, build_index, query_terms
from creditgym.envs.shop.webshop import WebShopFormatError, load_webshop, read_webshop

ITEM = {
    "asin": "B000000001", "name": "Ceramic Mug", "query": "mug", "category": "kitchen",
    "full_description": "A mug.", "small_description": ["Dishwasher safe"], "pricing": "$12.99",
    "customization_options": {"Color": [{"value": "Red"}, {"value": "Blue"}]},
}
HUMAN = {"B000000001": [{"instruction": "a red mug", "instruction_attributes": ["dishwasher safe"],
                         "instruction_options": ["red"]}]}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path / "cache"))


def _folder(tmp_path: Path, products: Any = None, human: Any = None, *, raw: bytes | None = None,
            raw_human: bytes | None = None) -> Path:
    folder = tmp_path / "webshop"
    folder.mkdir(exist_ok=True)
    (folder / "items_shuffle.json").write_bytes(raw if raw is not None else json.dumps(
        [ITEM] if products is None else products).encode())
    (folder / "items_human_ins.json").write_bytes(raw_human if raw_human is not None else json.dumps(
        HUMAN if human is None else human).encode())
    return folder


@pytest.mark.parametrize(
    ("products", "human", "raw", "raw_human", "message"),
    [
        (None, None, b"", None, r"items_shuffle.json is empty"),
        (None, None, b"  \n", None, r"items_shuffle.json is empty"),
        (None, None, None, b"", r"items_human_ins.json is empty"),
        (None, None, b"[{", None, r"items_shuffle.json is not valid JSON: .* line 1, column 3"),
        (None, None, b'[{"asin": "\xff"}]', None, r"items_shuffle.json is not UTF-8 text \(byte 11"),
        ({"B000000001": ITEM}, None, None, None, r"items_shuffle.json holds a dict .*must hold a JSON list"),
        (["B000000001"], None, None, None, r"items_shuffle.json: item 0 is a str .*must be a JSON object"),
        ([None, ITEM], None, None, None, r"item 0 is null"),
        ([], None, None, None, r"has no products with a valid asin"),
        ([{**ITEM, "asin": None}], None, None, None, r"has no products with a valid asin"),
        (None, [HUMAN], None, None, r"items_human_ins.json holds a list"),
        (None, {"B000000001": "a mug"}, None, None, r"asin 'B000000001' is a str .*list of instruction objects"),
        (None, {"B000000001": ["a mug"]}, None, None, r"instruction 0 is a str"),
        (None, {"B000000001": [{"instruction_attributes": "red"}]}, None, None,
         r"'instruction_attributes' is a str \('red'\); it must be a list of strings"),
        (None, {"B000000001": [{"instruction": 5, "instruction_attributes": ["x"]}]}, None, None,
         r"'instruction' is an int"),
        (None, {"B000000001": [{"instruction": "x", "instruction_attributes": ["x"], "instruction_options": [3]}]},
         None, None, r"'instruction_options' is a list"),
        (None, {"B999999999": HUMAN["B000000001"]}, None, None, r"no usable human instruction .* 1 products"),
        (None, {"B000000001": [{"instruction": "\U0001f600", "instruction_attributes": ["x"]}]}, None, None,
         r"no usable human instruction"),
        ([{**ITEM, "pricing": "-$5.00"}], None, None, None, r"item 0 \(asin 'B000000001'\): 'pricing' is '-\$5.00'"),
        ([{**ITEM, "pricing": "NaN"}], None, None, None, r"'pricing' is 'NaN'"),
        ([{**ITEM, "pricing": "$1" + "0" * 400}], None, None, None, r"'pricing' is '\$10000"),
        ([{**ITEM, "pricing": float("inf")}], None, None, None, r"'pricing' is inf"),
        ([{**ITEM, "pricing": -3}], None, None, None, r"'pricing' is -3"),
        ([{**ITEM, "pricing": ["$1"]}], None, None, None, r"'pricing' is \['\$1'\]"),
        ([{**ITEM, "name": ["Mug"]}], None, None, None, r"'name' is a list .*must be a string \(or null\)"),
        ([{**ITEM, "query": 7}], None, None, None, r"'query' is an int"),
        ([{**ITEM, "small_description": {"a": 1}}], None, None, None, r"'small_description' is a dict"),
        ([{**ITEM, "small_description": ["ok", 1]}], None, None, None, r"'small_description' is a list"),
        ([{**ITEM, "customization_options": ["Red"]}], None, None, None, r"'customization_options' is a list"),
        ([{**ITEM, "customization_options": {"Color": "Red"}}], None, None, None,
         r"customization option 'Color' is a str"),
        ([{**ITEM, "customization_options": {"Color": [{"value": 3}]}}], None, None, None,
         r"customization option 'Color' has a dict"),
    ],
)
def test_malformed_files_raise_errors_naming_file_and_field(
    tmp_path: Path, products: Any, human: Any, raw: bytes | None, raw_human: bytes | None, message: str
) -> None:
    folder = _folder(tmp_path, products, human, raw=raw, raw_human=raw_human)
    with pytest.raises(WebShopFormatError, match=message):
        ShopEnv(webshop_dir=folder)
    assert not list((tmp_path / "cache").rglob("*.sqlite")), "a failed load must not leave a cached catalog"


def test_synthetic_file_is_checked(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "items_ins_v2.json").write_text(json.dumps({"B000000001": {"attributes": "abc"}}))
    with pytest.raises(WebShopFormatError, match=r"'attributes' in items_ins_v2.json is a str"):
        read_webshop(folder)
    (folder / "items_ins_v2.json").write_text(json.dumps({"B000000001": "x"}))
    with pytest.raises(WebShopFormatError, match=r"items_ins_v2.json: the value for asin 'B000000001' is a str"):
        load_webshop(folder, goals="synthetic")
    (folder / "items_ins_v2.json").write_text(json.dumps([1]))
    with pytest.raises(WebShopFormatError, match=r"items_ins_v2.json holds a list"):
        load_webshop(folder, goals="synthetic")


def test_missing_folder_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        ShopEnv(webshop_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no items_shuffle\*.json in \."):
        ShopEnv(webshop_dir="")  # the current folder, not silently the generated catalog
    folder = _folder(tmp_path)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_products must be a positive integer"):
            load_webshop(folder, num_products=bad)


def test_lenient_where_nothing_is_lost(tmp_path: Path) -> None:
    items = [
        {**ITEM, "name": None, "pricing": 12.5, "average_rating": "4.5",
         "customization_options": {"Color": [], "Size": ["Large", {"value": ""}, {"value": "[XL]"}],
                                   "\u989c\u8272": [{"value": "Red"}]}},
        {**ITEM, "asin": "B000000002", "pricing": "$1,234.50 - $2,000.00", "average_rating": float("nan")},
        {**ITEM, "asin": "B000000003", "pricing": None, "average_rating": True},
        {**ITEM, "asin": "B000000004", "pricing": "from $9.50"},
        {**ITEM, "asin": "B000000002", "name": "a repeat"},
    ]
    raw = b"\xef\xbb\xbf" + json.dumps(items).encode()  # a UTF-8 byte-order mark is fine
    folder = _folder(tmp_path, raw=raw)
    with pytest.warns(UserWarning, match="skipped 1 repeating an asin"):
        products, goals = read_webshop(folder)
    first, second, third, fourth = products
    assert first.title == "" and first.price == 12.5 and first.rating == 4.5
    assert first.options == {"size": ("large", "(xl)"), "option 3": ("red",)}  # empty lists and values dropped
    assert second.price == 1234.5 and second.rating is None and second.title == "Ceramic Mug"
    assert third.price == 100.0 and third.rating is None and fourth.price == 9.5
    assert [g["product_id"] for g in goals] == ["B000000001"]
    with pytest.warns(UserWarning, match="skipped 1 repeating an asin"):
        env = ShopEnv(webshop_dir=folder)
    obs, info = env.reset(seed=0)
    assert info["goal"]["product_id"] == "B000000001" and env.observation_space.contains(obs)


def test_damaged_cache_is_rebuilt_and_temp_files_are_removed(tmp_path: Path) -> None:
    catalog = ShopCatalog.generated(0, 30)
    path = catalog.path
    expected = catalog.search("organic snack")
    index._OPEN.pop(path, None)
    for damage in (b"", b"not a database" * 100):
        path.write_bytes(damage)
        with pytest.warns(UserWarning, match="is damaged"):
            rebuilt = ShopCatalog.generated(0, 30)
        assert rebuilt.search("organic snack") == expected
        index._OPEN.pop(path, None)

    def broken() -> Any:
        yield from generate_catalog(0, 3)
        raise RuntimeError("generator failed")

    target = tmp_path / "cache" / "broken.sqlite"
    with pytest.raises(RuntimeError, match="generator failed"):
        build_index(target, broken())
    assert not target.exists() and not list(target.parent.glob("*.tmp"))


def test_unwritable_cache_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CREDITGYM_CACHE", str(blocker / "cache"))
    with pytest.raises(OSError, match=r"cannot write the shop catalog cache .*CREDITGYM_CACHE"):
        ShopEnv(num_products=20)


def test_concurrent_builders_use_distinct_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    products = generate_catalog(1, 200)
    target = tmp_path / "shared.sqlite"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            build_index(target, products)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sqlite3.connect(target).execute("SELECT count(*) FROM products").fetchone() == (200,)
    assert os.listdir(tmp_path) == ["shared.sqlite"]


def test_query_syntax_never_reaches_fts5() -> None:
    catalog = ShopCatalog.generated(0, 200)
    plain = catalog.search("organic snack")
    punctuation = ['"organic" snack', "organic* snack*", '"organic snack', "(organic) snack)", "^organic -snack",
                   "organic + snack", "organic\x00snack", "organic: {snack}", "ORGANIC AND SNACK"]
    for query in punctuation:
        assert catalog.search(query) == plain, query
    # FTS5 operators and column filters are read as plain words.
    for query in ['"organic" NEAR(snack, 2)', "title:organic snack", "organic NOT snack", "rowid:1 OR organic"]:
        assert catalog.search(query) == catalog.search(" ".join(query_terms(query))) != [], query
    assert catalog.search("*") == catalog.search('"') == catalog.search("the a of with") == []
    assert len(catalog.search("organic " * 10_000 + "x" * 100_000)) <= 50
    assert query_terms("Café CRÈME naïve \U0001f600 \u2615") == ["cafe", "creme", "naive"]
    assert query_terms(" ".join(f"w{i}" for i in range(1000))) == [f"w{i}" for i in range(index.MAX_QUERY_TERMS)]


def test_accented_query_finds_folded_webshop_text(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [{**ITEM, "name": "Crème Brûlée Mug"}])
    catalog = load_webshop(folder)
    assert catalog.search("creme brulee") == catalog.search("crème brûlée") == [catalog.row_of("B000000001")]
    env = ShopEnv(catalog=catalog)
    env.reset(seed=0)
    obs, *_ = env.step("search[crème brûlée]")
    assert "[B000000001] Creme Brulee Mug" in obs

