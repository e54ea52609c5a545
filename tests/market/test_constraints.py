"""The constraint filter language: valid filters, errors with positions, hostile input."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from fognode.protocols.market.constraints import (MAX_DEPTH, MAX_LENGTH, MAX_TERMS, And, Compare,
                                                  MatchAll, Not, Or, glob_match, parse)
from fognode.protocols.market.errors import ConstraintError

PROPS = {"service": "compute.wasm", "provider": "12D3KooWabc", "id": "o1", "region": "eu-west",
         "cores": 8, "memory_mib": 16384, "disk_mib": 100_000, "price.fuel": 15,
         "price.cpu_s": 3, "uptime": 99.5, "valid_until": 1_800_000_000}


@pytest.mark.parametrize("text, expected", [
    ("", True),
    ("   ", True),
    ("(cores>=4)", True),
    ("(cores>8)", False),
    ("(cores=8)", True),
    ("(&(service=compute.wasm)(cores>=4)(region=eu-*)(price.fuel<=20))", True),
    ("(&(cores>=4)(price.fuel<15))", False),
    ("(|(region=us-*)(region=*west))", True),
    ("(!(region=eu-west))", False),
    ("(region=*)", True),
    ("(region=e*-*e*t)", True),
    ("(region=eu-west*x)", False),
    ("(uptime>=99.5)", True),
    ("(uptime>99.5)", False),
    ("(price.gb_h>=0)", False),             # the offer does not price gb_h
    ("(!(price.gb_h>=0))", True),
    ("( & ( cores >= 4 ) ( region = eu-west ) )", True),
    ("(region=eu\\*west)", False),          # an escaped star is a literal star
    ("(cores>=-1)", True),
    ("(memory_mib>=16384.0)", True),
])
def test_valid_filters(text: str, expected: bool) -> None:
    assert parse(text).matches(PROPS) is expected


def test_tree_shape_and_counts() -> None:
    f = parse("(&(cores>=4)(|(region=eu-*)(!(price.fuel>20))))")
    assert f.terms == 3 and f.depth == 4
    assert isinstance(f.root, And) and isinstance(f.root.children[1], Or)
    assert isinstance(f.root.children[1].children[1], Not)
    assert f.root.children[0] == Compare("cores", ">=", number=4)
    assert parse("").root == MatchAll()
    assert parse("(region=a\\(b\\)c\\\\)").root == Compare("region", "=", pieces=("a(b)c\\",))


@pytest.mark.parametrize("text, pos, needle", [
    ("cores>=4", 0, "expected '('"),
    ("(cores>=4", 9, "expected ')'"),
    ("(cores>=4))", 10, "expected the end"),
    ("(&)", 2, "needs at least one filter"),
    ("(!)", 2, "expected '('"),
    ("(gpu>=1)", 1, "unknown property 'gpu'"),
    ("(cores>=four)", 8, "'four' is not a number"),
    ("(cores>=1e3)", 8, "not a number"),
    ("(cores>=4*)", 8, "no wildcard"),
    ("(region>=eu)", 7, "only '=' applies"),
    ("(cores!=4)", 6, "no '!=' operator"),
    ("(cores>=)", 8, "not a number"),
    ("(region=a(b)", 9, "unescaped '('"),
    ("(region=a\\b)", 9, "must escape"),
    ("(cores>=4)(cores>=5)", 10, "expected the end"),
    ("(cores 4)", 7, "expected an operator"),
    ("(&(cores>=4)#)", 12, "unexpected character '#'"),
    ("(cores>=٣)", 8, "not a number"),      # a non-ASCII digit
])
def test_errors_carry_the_position(text: str, pos: int, needle: str) -> None:
    with pytest.raises(ConstraintError) as ei:
        parse(text)
    assert needle in str(ei.value), str(ei.value)
    assert ei.value.position == pos, str(ei.value)


def test_limits() -> None:
    deep = "(!" * MAX_DEPTH + "(cores>=1)" + ")" * MAX_DEPTH
    with pytest.raises(ConstraintError, match="nested deeper"):
        parse(deep)
    ok = "(!" * (MAX_DEPTH - 1) + "(cores>=1)" + ")" * (MAX_DEPTH - 1)
    assert parse(ok).depth == MAX_DEPTH
    many = "(&" + "(cores>=1)" * (MAX_TERMS + 1) + ")"
    with pytest.raises(ConstraintError, match=f"more than {MAX_TERMS} comparisons"):
        parse(many)
    assert parse("(&" + "(cores>=1)" * MAX_TERMS + ")").terms == MAX_TERMS
    with pytest.raises(ConstraintError, match="over the limit"):
        parse("(" * 10_000_000)
    with pytest.raises(ConstraintError, match="value longer"):
        parse("(region=" + "a" * 200 + ")")
    with pytest.raises(ConstraintError, match="number longer"):
        parse("(cores>=" + "9" * 30 + ")")


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')",
    "(cores>=__import__('os').system('rm -rf /'))",
    "(region=${jndi:ldap://x/a})",             # treated as a literal value: fine, but no match
    "(&(cores>=4)); DROP TABLE offers; --",
    "(price.fuel<=eval(1))",
    "(cores>=4)\x00(cores>=5)",
    "lambda: 1",
    "{{7*7}}",
])
def test_things_that_look_like_code(text: str) -> None:
    try:
        f = parse(text)
    except ConstraintError:
        return
    assert f.matches(PROPS) is False           # parsed as plain data, matched as plain data


def test_hostile_patterns_run_in_linear_time() -> None:
    # a pattern that makes backtracking matchers explode: many stars, a near-miss subject
    pattern = ("a*" * 60)[:-1] + "b"
    subject = "a" * 120_000
    pieces = tuple(pattern.split("*"))
    t0 = time.perf_counter()
    assert glob_match(pieces, subject) is False
    f = parse(f"(region={pattern})")
    assert f.matches({"region": subject}) is False
    assert time.perf_counter() - t0 < 1.0
    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(ConstraintError):
            parse("(&" * 500 + "(cores>=1)")
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("pieces, s, want", [
    (("",), "", True), (("", ""), "", True), (("a", ""), "a", True), (("", "a"), "ba", True),
    (("ab", "ba"), "aba", False), (("ab", "ba"), "abba", True), (("a", "a", "a"), "aaa", True),
    (("a", "a", "a"), "aa", False), (("x", "", "y"), "xy", True),
])
def test_glob_match(pieces, s, want) -> None:
    assert glob_match(pieces, s) is want


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet="()&|!<>=*\\ abcdeforgin.0123456789-_",
                                       max_size=200))
def test_parser_never_raises_anything_but_its_own_error(text: str) -> None:
    try:
        f = parse(text)
    except ConstraintError as e:
        assert 0 <= e.position <= max(len(text), MAX_LENGTH)
        return
    f.matches(PROPS)


_names_num = st.sampled_from(["cores", "memory_mib", "price.fuel", "uptime", "price.gb_h"])
_leaf = st.one_of(
    st.builds(lambda n, op, v: f"({n}{op}{v})", _names_num,
              st.sampled_from(["=", "<", "<=", ">", ">="]), st.integers(-5, 20_000)),
    st.builds(lambda v: f"(region={v})", st.sampled_from(["eu-*", "*west", "us-east", "*", "e*t"])))
_filters = st.recursive(_leaf, lambda kids: st.one_of(
    st.builds(lambda xs: "(&" + "".join(xs) + ")", st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda xs: "(|" + "".join(xs) + ")", st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda x: "(!" + x + ")", kids)), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_filters)
def test_generated_filters_parse(text: str) -> None:
    f = parse(text)
    assert f.terms == text.count("=") + text.count("<") + text.count(">") - text.count("<=") \
        - text.count(">=")
    f.matches(PROPS)
