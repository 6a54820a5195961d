"""The vocabulary of the procedural catalog: categories, product types, attributes, options and brands.

Option values are unique within a product type, so a click on a value names one option without ambiguity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductType:
    name: str
    """Singular and lower case, e.g. "snack bar"; the goal names it and the title contains it."""
    base_price: float
    """Typical price in dollars; products vary around it."""
    options: tuple[str, ...]
    """Names of the option dimensions, keys of `OPTION_VALUES`."""


@dataclass(frozen=True)
class Category:
    name: str
    attributes: tuple[str, ...]
    brands: tuple[str, ...]
    types: tuple[ProductType, ...]


OPTION_VALUES: dict[str, tuple[str, ...]] = {
    "flavor": (
        "chocolate", "vanilla", "peanut butter", "strawberry", "caramel", "coconut", "mint", "blueberry",
        "lemon", "cinnamon", "honey", "almond",
    ),
    "pack count": ("1 pack", "2 pack", "3 pack", "4 pack", "6 pack", "12 pack", "24 pack"),
    "food size": ("4 ounce", "8 ounce", "12 ounce", "16 ounce", "2 pound", "5 pound"),
    "roast": ("light roast", "medium roast", "dark roast", "espresso roast"),
    "heat": ("mild", "medium hot", "extra hot"),
    "scent": ("lavender", "citrus", "unscented", "rose", "eucalyptus", "sandalwood", "cucumber", "fresh linen"),
    "volume": ("1 fl oz", "2 fl oz", "4 fl oz", "8 fl oz", "16 fl oz", "32 fl oz"),
    "shade": ("ruby red", "soft pink", "nude", "jet black", "coral", "plum", "champagne"),
    "color": (
        "black", "white", "navy", "grey", "red", "olive", "blue", "beige", "pink", "green", "brown", "yellow",
    ),
    "clothing size": ("xs", "small", "medium", "large", "xl", "xxl"),
    "shoe size": ("size 6", "size 7", "size 8", "size 9", "size 10", "size 11", "size 12"),
    "bed size": ("twin", "full", "queen", "eastern king", "california king"),
    "dimensions": ("12 x 12 inch", "18 x 18 inch", "20 x 20 inch", "24 x 24 inch"),
    "rug size": ("2 x 3 ft", "3 x 5 ft", "5 x 7 ft", "8 x 10 ft"),
    "cable length": ("1 ft", "3 ft", "6 ft", "10 ft"),
    "capacity": ("5000mah", "10000mah", "20000mah", "26800mah"),
    "storage": ("32gb", "64gb", "128gb", "256gb"),
}

CATEGORIES: tuple[Category, ...] = (
    Category(
        name="grocery",
        attributes=(
            "gluten free", "sugar free", "non gmo", "keto friendly", "low calorie", "dairy free", "vegan",
            "organic", "high protein", "kosher", "low sodium", "caffeine free",
        ),
        brands=(
            "Nutriva", "Harvest Lane", "Golden Acre", "Pure Pantry", "Sunny Mill", "Wild Root", "Oakfield",
            "Bright Bite", "Green Valley", "Maple Ridge",
        ),
        types=(
            ProductType("snack bar", 18.0, ("flavor", "pack count")),
            ProductType("coffee", 14.0, ("roast", "food size")),
            ProductType("herbal tea", 9.0, ("flavor", "pack count")),
            ProductType("cookies", 7.0, ("flavor", "pack count")),
            ProductType("potato chips", 6.0, ("flavor", "food size")),
            ProductType("beef jerky", 12.0, ("flavor", "food size")),
            ProductType("protein powder", 35.0, ("flavor", "food size")),
            ProductType("olive oil", 16.0, ("food size", "pack count")),
            ProductType("hot sauce", 8.0, ("heat", "pack count")),
            ProductType("granola", 9.0, ("flavor", "food size")),
        ),
    ),
    Category(
        name="beauty",
        attributes=(
            "paraben free", "cruelty free", "fragrance free", "long lasting", "travel size", "hypoallergenic",
            "sulfate free", "natural ingredients", "dermatologist tested", "alcohol free", "easy to apply",
        ),
        brands=(
            "Lumiere", "Velvet Bloom", "Pure Aura", "Seaglass", "Botanica", "Dewdrop", "Silk & Stone",
            "Glow Theory", "Nordic Skin", "Amber Leaf",
        ),
        types=(
            ProductType("shampoo", 12.0, ("scent", "volume")),
            ProductType("conditioner", 12.0, ("scent", "volume")),
            ProductType("face moisturizer", 22.0, ("scent", "volume")),
            ProductType("lip balm", 5.0, ("scent", "pack count")),
            ProductType("deodorant", 8.0, ("scent", "pack count")),
            ProductType("sunscreen", 14.0, ("volume", "pack count")),
            ProductType("body lotion", 11.0, ("scent", "volume")),
            ProductType("nail polish", 9.0, ("shade", "pack count")),
            ProductType("hair oil", 16.0, ("scent", "volume")),
            ProductType("face serum", 25.0, ("scent", "volume")),
        ),
    ),
    Category(
        name="fashion",
        attributes=(
            "machine washable", "moisture wicking", "slim fit", "relaxed fit", "long sleeve", "short sleeve",
            "quick drying", "breathable", "stretch fabric", "water resistant", "button closure", "elastic waist",
        ),
        brands=(
            "Northline", "Urban Thread", "Coastal Co", "Trailmark", "Loomwell", "Fieldstone", "Metro Fit",
            "Harbor & Pine", "Summit Wear", "Kindred",
        ),
        types=(
            ProductType("t-shirt", 16.0, ("color", "clothing size")),
            ProductType("hoodie", 35.0, ("color", "clothing size")),
            ProductType("jeans", 40.0, ("color", "clothing size")),
            ProductType("running shoes", 65.0, ("color", "shoe size")),
            ProductType("sneakers", 55.0, ("color", "shoe size")),
            ProductType("dress", 38.0, ("color", "clothing size")),
            ProductType("rain jacket", 60.0, ("color", "clothing size")),
            ProductType("socks", 12.0, ("color", "pack count")),
            ProductType("leggings", 25.0, ("color", "clothing size")),
            ProductType("shorts", 22.0, ("color", "clothing size")),
        ),
    ),
    Category(
        name="home",
        attributes=(
            "easy to clean", "easy assembly", "space saving", "solid wood", "water resistant", "heavy duty",
            "non slip", "eco friendly", "machine washable", "mid century", "stain resistant",
        ),
        brands=(
            "Hearthwood", "Nestly", "Casa Verde", "Oak & Ember", "Lumen Home", "Stillwater", "Brightnest",
            "Timberline", "Cozy Corner", "Alder House",
        ),
        types=(
            ProductType("bookshelf", 80.0, ("color", "pack count")),
            ProductType("office chair", 120.0, ("color", "pack count")),
            ProductType("coffee table", 95.0, ("color", "pack count")),
            ProductType("throw pillow", 18.0, ("color", "dimensions")),
            ProductType("curtains", 30.0, ("color", "pack count")),
            ProductType("bath towel", 20.0, ("color", "pack count")),
            ProductType("desk lamp", 28.0, ("color", "pack count")),
            ProductType("storage bin", 15.0, ("color", "pack count")),
            ProductType("area rug", 70.0, ("color", "rug size")),
            ProductType("bed sheets", 40.0, ("color", "bed size")),
        ),
    ),
    Category(
        name="electronics",
        attributes=(
            "wireless", "bluetooth", "noise cancelling", "fast charging", "water resistant", "long battery life",
            "usb c", "portable", "high definition", "plug and play", "compact",
        ),
        brands=(
            "Voltix", "Sonara", "Cirrus", "Pulse Labs", "Kinetic", "Arcwave", "Nimbus", "Quanta", "Brightline",
            "Helix",
        ),
        types=(
            ProductType("headphones", 60.0, ("color", "pack count")),
            ProductType("earbuds", 40.0, ("color", "pack count")),
            ProductType("phone charger", 18.0, ("color", "cable length")),
            ProductType("power bank", 30.0, ("color", "capacity")),
            ProductType("bluetooth speaker", 45.0, ("color", "pack count")),
            ProductType("usb cable", 9.0, ("color", "cable length")),
            ProductType("webcam", 50.0, ("color", "pack count")),
            ProductType("computer mouse", 22.0, ("color", "pack count")),
            ProductType("keyboard", 45.0, ("color", "pack count")),
            ProductType("memory card", 15.0, ("storage", "pack count")),
        ),
    ),
)

#: Words that make titles read like listings; they carry no goal information.
PRODUCT_LINES: tuple[str, ...] = (
    "Classic", "Everyday", "Premium", "Essentials", "Ultra", "Select", "Original", "Signature", "Plus", "Prime",
    "Daily", "Pro", "Lite", "Max", "Core", "Studio",
)

#: The option name shown to the shopper, e.g. "food size" is displayed as "size".
OPTION_DISPLAY: dict[str, str] = {
    "food size": "size", "clothing size": "size", "shoe size": "size", "bed size": "size", "rug size": "size",
    "dimensions": "size", "volume": "size",
}
