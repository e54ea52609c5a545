"""The constraint filter language over offer properties (Golem-style LDAP filters).

Grammar (whitespace is allowed between tokens; the value of a comparison runs up to its
closing parenthesis, with leading and trailing blanks dropped)::

    filter     := "(" body ")"
    body       := "&" filter+        all of
                | "|" filter+        any of
                | "!" filter         not
                | NAME OP VALUE      a comparison
    OP         := "=" | "<" | "<=" | ">" | ">="
    NAME       := [A-Za-z0-9_.-]+    one of PROPERTIES
    VALUE      := any characters but "(" and ")"; "\\" escapes one of ( ) * \\

Example: ``(&(service=compute.wasm)(cores>=4)(region=eu-*)(price.fuel<=20))``.
The empty filter (or only blanks) matches every offer.

Typing is checked when the filter is parsed, not when it runs: every NAME must be a known
property; numeric properties take a decimal number (``-?[0-9]+(.[0-9]+)?``, no exponent) and
any OP; text properties take only ``=``, where an unescaped ``*`` matches any run of
characters (``(region=eu-*)``; ``(region=*)`` is presence, true for every offer).

Limits: MAX_LENGTH characters, MAX_DEPTH nested filters, MAX_TERMS comparisons, MAX_VALUE
characters per value. The tokenizer and the recursive-descent parser are hand-written, run in
linear time and recurse at most MAX_DEPTH levels; wildcard matching splits the pattern at its
stars and finds the pieces left to right (no regular expressions, no backtracking), which is
exact for patterns whose only metacharacter is ``*``. Nothing is evaluated as code. Every
problem raises `ConstraintError` with the 0-based position of the offending character.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Union

from fognode.protocols.market.errors import ConstraintError

MAX_LENGTH = 1024
MAX_DEPTH = 12
MAX_TERMS = 32
MAX_VALUE = 128
MAX_NUMBER_DIGITS = 24


class Kind(enum.Enum):
    NUMBER = "number"
    TEXT = "text"


# The properties an offer exposes to filters (messages.Offer.properties builds them).
PROPERTIES: dict[str, Kind] = {
    "service": Kind.TEXT,        # compute.wasm | storage | fog.hosting
    "provider": Kind.TEXT,       # the provider's peer id
    "id": Kind.TEXT,             # the provider's offer id
    "region": Kind.TEXT,
    "cores": Kind.NUMBER,
    "memory_mib": Kind.NUMBER,
    "disk_mib": Kind.NUMBER,
    "price.fuel": Kind.NUMBER,   # micro-units per million fuel
    "price.cpu_s": Kind.NUMBER,  # micro-units per CPU-second
    "price.gb_h": Kind.NUMBER,   # micro-units per GB-hour
    "uptime": Kind.NUMBER,       # guaranteed uptime, percent
    "valid_until": Kind.NUMBER,  # unix seconds
}

OPS = ("=", "<", "<=", ">", ">=")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_ESCAPABLE = frozenset("()*\\")
_BLANKS = " \t\r\n"


class Tok(enum.Enum):
    LPAREN = "("
    RPAREN = ")"
    AND = "&"
    OR = "|"
    NOT = "!"
    NAME = "name"
    OP = "operator"
    VALUE = "value"
    END = "end of filter"


@dataclass(frozen=True)
class Token:
    kind: Tok
    pos: int
    text: str = ""
    pieces: tuple[str, ...] = ()    # VALUE: the text split at unescaped stars


def _read_value(text: str, i: int) -> tuple[Token, int]:
    """The VALUE starting at `i` (after an operator), up to its unescaped ')'."""
    n = len(text)
    while i < n and text[i] in _BLANKS:
        i += 1
    start = i
    pieces: list[str] = []
    cur: list[str] = []
    trailing_blank = 0        # blanks at the end of `cur` that were not escaped
    length = 0
    while i < n and text[i] != ")":
        c = text[i]
        if c == "(":
            raise ConstraintError("unescaped '(' in a value (write \\( )", i)
        if c == "\\":
            if i + 1 >= n or text[i + 1] not in _ESCAPABLE:
                raise ConstraintError("'\\' must escape one of ( ) * \\", i)
            cur.append(text[i + 1])
            trailing_blank = 0
            i += 2
        elif c == "*":
            pieces.append("".join(cur))
            cur, trailing_blank = [], 0
            i += 1
        else:
            cur.append(c)
            trailing_blank = trailing_blank + 1 if c in _BLANKS else 0
            i += 1
        length += 1
        if length > MAX_VALUE:
            raise ConstraintError(f"value longer than {MAX_VALUE} characters", i)
    if trailing_blank:
        del cur[-trailing_blank:]
    pieces.append("".join(cur))
    raw = "*".join(pieces)
    return Token(Tok.VALUE, start, raw, tuple(pieces)), i


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with END; ConstraintError on a character out of place."""
    if len(text) > MAX_LENGTH:
        raise ConstraintError(f"filter is {len(text)} characters, over the limit of {MAX_LENGTH}",
                              MAX_LENGTH)
    out: list[Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _BLANKS:
            i += 1
        if i >= n:
            out.append(Token(Tok.END, n))
            return out
        c = text[i]
        if c in "()&|!":
            if c == "!" and out and out[-1].kind is Tok.NAME:
                raise ConstraintError("no '!=' operator: write (!(name=value))", i)
            out.append(Token(Tok(c), i, c))
            i += 1
        elif c in "<>=":
            op = text[i:i + 2] if text[i:i + 2] in ("<=", ">=") else c
            out.append(Token(Tok.OP, i, op))
            i += len(op)
            tok, i = _read_value(text, i)
            out.append(tok)
        elif c in _NAME_CHARS:
            start = i
            while i < n and text[i] in _NAME_CHARS:
                i += 1
            out.append(Token(Tok.NAME, start, text[start:i]))
        else:
            raise ConstraintError(f"unexpected character {c!r}", i)


# ---- the syntax tree ------------------------------------------------------------------------

@dataclass(frozen=True)
class MatchAll:
    pass


@dataclass(frozen=True)
class Compare:
    name: str
    op: str
    number: int | float | None = None      # NUMBER properties
    pieces: tuple[str, ...] = ()           # TEXT properties: the pattern split at its stars


@dataclass(frozen=True)
class And:
    children: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    children: tuple["Node", ...]


@dataclass(frozen=True)
class Not:
    child: "Node"


Node = Union[MatchAll, Compare, And, Or, Not]


def _number(tok: Token) -> int | float:
    s = tok.text
    body = s[1:] if s.startswith("-") else s
    whole, dot, frac = body.partition(".")
    ok = (whole.isascii() and whole.isdigit() and (not dot or (frac.isascii() and frac.isdigit())))
    if not ok:
        raise ConstraintError(f"{s[:40]!r} is not a number", tok.pos)
    if len(body) > MAX_NUMBER_DIGITS:
        raise ConstraintError(f"number longer than {MAX_NUMBER_DIGITS} characters", tok.pos)
    return float(s) if dot else int(s)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.terms = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, kind: Tok, what: str) -> Token:
        tok = self.tokens[self.i]
        if tok.kind is not kind:
            got = tok.kind.value if tok.kind is not Tok.NAME else f"name {tok.text[:40]!r}"
            raise ConstraintError(f"expected {what}, found {got}", tok.pos)
        self.i += 1
        return tok

    def filter(self, depth: int) -> Node:
        open_ = self.take(Tok.LPAREN, "'('")
        if depth > MAX_DEPTH:
            raise ConstraintError(f"filters nested deeper than {MAX_DEPTH}", open_.pos)
        self.depth = max(self.depth, depth)
        tok = self.peek()
        node: Node
        if tok.kind in (Tok.AND, Tok.OR):
            self.i += 1
            children = []
            while self.peek().kind is Tok.LPAREN:
                children.append(self.filter(depth + 1))
            if not children:
                raise ConstraintError(f"'{tok.text}' needs at least one filter", self.peek().pos)
            node = And(tuple(children)) if tok.kind is Tok.AND else Or(tuple(children))
        elif tok.kind is Tok.NOT:
            self.i += 1
            node = Not(self.filter(depth + 1))
        else:
            node = self.comparison()
        self.take(Tok.RPAREN, "')'")
        return node

    def comparison(self) -> Compare:
        name = self.take(Tok.NAME, "'&', '|', '!' or a property name")
        kind = PROPERTIES.get(name.text)
        if kind is None:
            raise ConstraintError(f"unknown property {name.text[:40]!r} (known: "
                                  f"{', '.join(sorted(PROPERTIES))})", name.pos)
        op = self.take(Tok.OP, "an operator (= < <= > >=)")
        value = self.take(Tok.VALUE, "a value")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise ConstraintError(f"more than {MAX_TERMS} comparisons", name.pos)
        if kind is Kind.TEXT:
            if op.text != "=":
                raise ConstraintError(f"{name.text!r} is text: only '=' applies", op.pos)
            return Compare(name.text, "=", pieces=value.pieces)
        if len(value.pieces) != 1:
            raise ConstraintError(f"{name.text!r} is a number: no wildcard", value.pos)
        return Compare(name.text, op.text, number=_number(value))


@dataclass(frozen=True)
class Filter:
    """A parsed filter: `matches(props)` tests one offer's properties."""

    text: str
    root: Node
    terms: int
    depth: int

    def matches(self, props: Mapping[str, object]) -> bool:
        return evaluate(self.root, props)


def parse(text: str) -> Filter:
    """Parse `text`; ConstraintError (with the position) on anything invalid."""
    if not isinstance(text, str):
        raise ConstraintError(f"a filter is text, not {type(text).__name__}", 0)
    tokens = tokenize(text)
    if tokens[0].kind is Tok.END:
        return Filter(text, MatchAll(), 0, 0)
    p = _Parser(tokens)
    root = p.filter(1)
    p.take(Tok.END, "the end of the filter")
    return Filter(text, root, p.terms, p.depth)


def glob_match(pieces: tuple[str, ...], s: str) -> bool:
    """True when `s` matches the pattern whose literal pieces lie between stars.

    Leftmost-first search of each middle piece is exact for star-only patterns and takes
    O(len(s) * len(pattern)) at worst: no backtracking."""
    if len(pieces) == 1:
        return s == pieces[0]
    first, last = pieces[0], pieces[-1]
    if len(s) < len(first) + len(last) or not s.startswith(first) or not s.endswith(last):
        return False
    pos, end = len(first), len(s) - len(last)
    for mid in pieces[1:-1]:
        if not mid:
            continue
        found = s.find(mid, pos, end)
        if found < 0:
            return False
        pos = found + len(mid)
    return True


def compare_number(op: str, have: int | float, want: int | float) -> bool:
    if op == "=":
        return have == want
    if op == "<":
        return have < want
    if op == "<=":
        return have <= want
    if op == ">":
        return have > want
    return have >= want


def evaluate(node: Node, props: Mapping[str, object]) -> bool:
    """Evaluate a parsed filter on one offer's properties (a missing property never matches)."""
    if isinstance(node, Compare):
        have = props.get(node.name)
        if have is None:
            return False
        if node.number is None:
            return isinstance(have, str) and glob_match(node.pieces, have)
        return (isinstance(have, (int, float)) and not isinstance(have, bool)
                and compare_number(node.op, have, node.number))
    if isinstance(node, And):
        return all(evaluate(c, props) for c in node.children)
    if isinstance(node, Or):
        return any(evaluate(c, props) for c in node.children)
    if isinstance(node, Not):
        return not evaluate(node.child, props)
    return True
