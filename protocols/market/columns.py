"""A column snapshot of the order book and vectorised constraint evaluation (numpy).

`Columns.build(offers)` lays one service's offers out as arrays, rows sorted by
(provider key, offer id) so that the row index is a deterministic tie-break. Numeric
properties are float64 columns (every value the decoders admit is below 2**53, so exact), a
price the offer does not set is NaN (every comparison with it is false, as a missing property
is for `constraints.evaluate`); text properties are integer codes into a table of distinct
values. `mask(node)` evaluates a parsed filter on every row at once: a text comparison is
decided once per distinct value (glob_match) and looked up by code. The result equals
`constraints.evaluate` on each offer's properties (tests/market/test_matching.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fognode.protocols.market.constraints import (And, Compare, MatchAll, Node, Not, Or,
                                                  PROPERTIES, Kind, glob_match)
from fognode.protocols.market.messages import Offer
from fognode.protocols.market.wirecommon import UNITS

_EXACT = 2**53        # every numeric property the decoders admit is below this in magnitude
NUMERIC = tuple(n for n, k in PROPERTIES.items() if k is Kind.NUMBER)
TEXT = tuple(n for n, k in PROPERTIES.items() if k is Kind.TEXT)


@dataclass
class TextColumn:
    codes: np.ndarray            # int32 index into values
    values: list[str]


class Columns:
    def __init__(self, offers: list[Offer]) -> None:
        self.offers = sorted(offers, key=lambda o: o.key)
        n = len(self.offers)
        self.n = n
        self.row_of = {o.key: i for i, o in enumerate(self.offers)}
        self.dead = np.zeros(n, dtype=bool)     # rows whose offer left the book since the build
        nan = float("nan")
        cols: dict[str, list[float]] = {name: [nan] * n for name in NUMERIC}
        text_idx: dict[str, dict[str, int]] = {name: {} for name in TEXT}
        text_codes: dict[str, list[int]] = {name: [0] * n for name in TEXT}
        for i, o in enumerate(self.offers):
            for name, v in o.properties().items():
                col = cols.get(name)
                if col is not None:
                    col[i] = v
                else:
                    table = text_idx[name]
                    text_codes[name][i] = table.setdefault(v, len(table))
        num = {name: np.array(col, dtype=np.float64) for name, col in cols.items()}
        codes = {name: np.array(c, dtype=np.int32) for name, c in text_codes.items()}
        self.num = num
        self.text = {name: TextColumn(codes[name], list(text_idx[name])) for name in TEXT}
        self.prices = {u: num[f"price.{u}"] for u in UNITS}
        # exact integer prices (0 where unset) and which rows set them, for exact costs
        self.has_price = {u: ~np.isnan(a) for u, a in self.prices.items()}
        self.int_price = {u: np.where(self.has_price[u], np.nan_to_num(a), 0).astype(np.int64)
                          for u, a in self.prices.items()}
        self.valid_until = num["valid_until"]
        self.provider_codes = codes["provider"]
        self.providers = self.text["provider"].values

    def mask(self, node: Node) -> np.ndarray:
        """Boolean array: which rows `node` accepts."""
        if isinstance(node, Compare):
            if node.number is None:
                col = self.text[node.name]
                lut = np.fromiter((glob_match(node.pieces, v) for v in col.values), dtype=bool,
                                  count=len(col.values))
                return lut[col.codes] if len(lut) else np.zeros(self.n, dtype=bool)
            a = self.num[node.name]
            if abs(node.number) >= _EXACT:      # beyond every admitted value: decided by sign
                big = node.number > 0
                known = ~np.isnan(a)
                if node.op == "=":
                    return np.zeros(self.n, dtype=bool)
                return known if (node.op in ("<", "<=")) == big else np.zeros(self.n, dtype=bool)
            x = float(node.number)
            if node.op == "=":
                return a == x
            if node.op == "<":
                return a < x
            if node.op == "<=":
                return a <= x
            if node.op == ">":
                return a > x
            return a >= x
        if isinstance(node, And):
            m = self.mask(node.children[0])
            for c in node.children[1:]:
                m &= self.mask(c)
            return m
        if isinstance(node, Or):
            m = self.mask(node.children[0])
            for c in node.children[1:]:
                m |= self.mask(c)
            return m
        if isinstance(node, Not):
            return ~self.mask(node.child)
        assert isinstance(node, MatchAll)
        return np.ones(self.n, dtype=bool)
