"""A population's own catalogue: categories, their products and prices, and popularity.

Built once per population from its seed, so every customer of it shops in the
same catalogue (see :mod:`stream.training.populations`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

import numpy as np

from stream.training.generate import CATEGORIES, N_PRODUCTS, _Product
from stream.training.population_config import MIN_ORDER_VALUE, PopulationConfig

#: Products per category (at least; small catalogues get N_PRODUCTS in all).
_PRODUCTS_PER_CATEGORY: Final = 8
#: Of which accessories, at 1-10% of the category's price level.
_ACCESSORIES_PER_CATEGORY: Final = 3
#: Category popularity falls as 1 / rank**this (Zipf), for favourites and exploring.
_POPULARITY_EXPONENT: Final = 1.0
_CATALOGUE_TAG: Final = 4  # a population's catalogue (see _CATALOGUE_SIZE_TAG)


@dataclass(frozen=True, slots=True)
class _Catalogue:
    """One population's products, per category sorted by price."""

    by_category: tuple[tuple[_Product, ...], ...]
    category_prices: tuple[tuple[float, ...], ...]
    #: Cumulative popularity of the categories, Zipf in their index.
    popularity: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.by_category)


def _catalogue(cfg: PopulationConfig) -> _Catalogue:
    n_cat = cfg.catalogue_size
    rng = np.random.default_rng([cfg.seed, _CATALOGUE_TAG])
    n_products = max(N_PRODUCTS, _PRODUCTS_PER_CATEGORY * n_cat)
    # Each category belongs to one of the named departments, which sets its
    # price level relative to the others (compressed: a square root of the
    # departments' spread), around the population's value per order line.
    # Prices so follow the population's order values, and most order lines
    # find a product near their budget in whatever category taste picks.
    departments = rng.integers(0, len(CATEGORIES), n_cat)
    medians = np.array([m for _, m in CATEGORIES])
    relative = np.sqrt(medians / np.exp(np.log(medians).mean()))
    line_value = cfg.mean_order_value / cfg.lines_per_order
    category_level = line_value * relative[departments] * rng.lognormal(0.0, 0.3, n_cat)
    # Round-robin then shuffle: every category gets n_products / n_cat products.
    cats = rng.permutation(np.arange(n_products) % n_cat)
    spread = rng.lognormal(0.0, 1.0, n_products)
    # Every category also has accessories (cables beside the TVs): its first
    # few products cost 1-10% of its level, so the small lines of an order find
    # something in whatever category taste picked instead of costing more than
    # their budget, even when several lines land in one category.
    order = np.argsort(cats, kind="stable")
    slot = np.empty(n_products, dtype=np.int64)
    slot[order] = np.arange(n_products) - np.repeat(
        np.searchsorted(cats[order], np.arange(n_cat)), np.bincount(cats, minlength=n_cat)
    )
    accessory = slot < _ACCESSORIES_PER_CATEGORY
    spread[accessory] = np.exp(rng.uniform(math.log(0.01), math.log(0.1), int(accessory.sum())))
    prices = np.maximum(np.round(category_level[cats] * spread, 2), MIN_ORDER_VALUE)
    width, pwidth = len(str(n_cat - 1)), len(str(n_products - 1))
    names = [f"{CATEGORIES[int(d)][0]}-{i:0{width}d}" for i, d in enumerate(departments)]
    groups: list[list[_Product]] = [[] for _ in range(n_cat)]
    for i, (c, price) in enumerate(zip(cats.tolist(), prices.tolist(), strict=True)):
        groups[c].append(_Product(f"p{i:0{pwidth}d}", names[c], float(price)))
    by_category = tuple(tuple(sorted(g, key=attrgetter("price"))) for g in groups)
    # Popularity is Zipf in the category index, which is unrelated to price.
    weights = (np.arange(1, n_cat + 1, dtype=np.float64)) ** -_POPULARITY_EXPONENT
    return _Catalogue(
        by_category,
        tuple(tuple(p.price for p in g) for g in by_category),
        tuple(np.cumsum(weights).tolist()),
    )
