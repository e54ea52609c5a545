"""Cell and relay-message codecs: round trips, fixed size, strict decoders (only CellError)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.protocols.onion import cells
from fognode.protocols.onion.cells import (BODY_LEN, _RandomPool, CELL_SIZE, MAX_DATA, PLAIN_LEN, Cell, CellCommand, CellFramer,
                                           RelayCommand, RelayMsg, RelayRun, decode_cell, decode_relay,
                                           frame_relay_cells)
from fognode.protocols.onion.errors import CellError, TeardownReason


def test_cell_round_trip_is_fixed_size_and_random_padded() -> None:
    c = Cell(0x8000_0001, CellCommand.CREATE, cells.create_body(b"\x01" * 96))
    a, b = c.encode(), c.encode()
    assert len(a) == len(b) == CELL_SIZE == 4096
    assert a[:105] == b[:105] and a[-64:] != b[-64:]          # padding is random, not zeros
    d = decode_cell(a)
    assert d.circ_id == c.circ_id and d.command is CellCommand.CREATE and len(d.body) == BODY_LEN
    assert cells.parse_create(d.body) == b"\x01" * 96


def test_relay_msg_round_trip() -> None:
    for cmd, sid, data in [(RelayCommand.DATA, 7, b"x" * MAX_DATA), (RelayCommand.SENDME, 0, cells.sendme_data(b"t" * 16)),
                           (RelayCommand.BEGIN, 1, b"abc.fog:80"), (RelayCommand.DROP, 0, b"")]:
        plain = RelayMsg(cmd, sid, data).encode()
        assert len(plain) == PLAIN_LEN
        assert decode_relay(plain) == RelayMsg(cmd, sid, data)
    assert cells.parse_sendme(cells.sendme_data(b"t" * 16)) == b"t" * 16
    assert cells.parse_extend(cells.extend_data("12D3KooWpeer", b"k" * 96)) == ("12D3KooWpeer", b"k" * 96)
    assert cells.parse_destroy(cells.destroy_body(TeardownReason.INTEGRITY)) is TeardownReason.INTEGRITY
    assert cells.parse_padding_negotiate(cells.padding_negotiate_data(2.5)) == 2.5


@pytest.mark.parametrize("data, field", [
    (b"", "cell is 0 bytes"),
    (b"\x00" * (CELL_SIZE - 1), "want 4096"),
    (b"\x00" * (CELL_SIZE + 1), "want 4096"),
    (struct.pack(">IB", 5, 77) + bytes(BODY_LEN), "command: unknown"),
    (struct.pack(">IB", 0, 3) + bytes(BODY_LEN), "circ_id: 0"),
])
def test_bad_cells_name_what_is_wrong(data: bytes, field: str) -> None:
    with pytest.raises(CellError, match=field):
        decode_cell(data)


@pytest.mark.parametrize("target", ["", "nohost", "a.fog:0", "a.fog:99999", "a b.fog:80", ":80", "a.fog:x"])
def test_begin_target_is_checked(target: str) -> None:
    with pytest.raises(CellError, match="begin.target"):
        cells.parse_begin(target.encode())


def test_relay_msg_field_checks() -> None:
    with pytest.raises(CellError, match="relay.stream_id"):
        decode_relay(RelayMsg(RelayCommand.DATA, 0, b"x").encode())
    with pytest.raises(CellError, match="relay.stream_id"):
        decode_relay(RelayMsg(RelayCommand.EXTEND, 3, b"x").encode())
    bad_len = bytearray(RelayMsg(RelayCommand.DATA, 1, b"x").encode())
    bad_len[3:5] = struct.pack(">H", MAX_DATA + 1)
    with pytest.raises(CellError, match="relay.length"):
        decode_relay(bytes(bad_len))


def test_framer_skips_short_and_oversize_frames_and_stays_in_step() -> None:
    good = Cell(9, CellCommand.RELAY, b"").frame()
    short = struct.pack(">H", 514) + bytes(514)
    over = struct.pack(">H", 5000) + bytes(5000)
    garbage = struct.pack(">H", CELL_SIZE) + struct.pack(">IB", 9, 200) + bytes(BODY_LEN)
    stream = good + short + good + over + garbage + good
    f = CellFramer()
    out = []
    for i in range(0, len(stream), 1000):          # arbitrary chunking
        out += f.feed(stream[i:i + 1000])
    kinds = ["cell" if isinstance(x, Cell) else str(x).split(":")[0] for x in out]
    assert kinds == ["cell", "length", "cell", "length", "command", "cell"]
    assert "short" in str(out[1]) and "oversize" in str(out[3])
    assert f.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=CELL_SIZE + 8))
def test_decoding_arbitrary_bytes_only_raises_cell_error(data: bytes) -> None:
    padded = data[:CELL_SIZE].ljust(CELL_SIZE, b"\x00") if len(data) > 5 else data
    plain = data[:PLAIN_LEN].ljust(PLAIN_LEN, b"\x00")
    for fn, arg in [(decode_cell, data), (decode_cell, padded), (decode_relay, data), (decode_relay, plain),
                    (cells.parse_create, data), (cells.parse_created, data), (cells.parse_destroy, data),
                    (cells.parse_extend, data), (cells.parse_begin, data), (cells.parse_sendme, data),
                    (cells.parse_end, data), (cells.parse_padding_negotiate, data)]:
        try:
            fn(arg)
        except CellError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=9000), max_size=6))
def test_framer_never_raises(chunks: list[bytes]) -> None:
    f = CellFramer()
    for c in chunks:
        for item in f.feed(c):
            assert isinstance(item, (Cell, CellError))
    assert f.buffered <= 2 + 65535


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, CELL_SIZE * 3), min_size=1, max_size=12), st.integers(1, 40))
def test_framer_splits_a_many_cell_stream_the_same_whatever_its_chunks(cuts: list[int], n: int) -> None:
    """A link frame of many cells is parsed in place: any chunking, down to cuts inside the
    length prefix, gives the cells in order with their bodies intact, and nothing left over."""
    sent = [Cell(i + 1, CellCommand.RELAY, bytes([i % 256]) * BODY_LEN) for i in range(n)]
    stream = b"".join(c.frame() for c in sent)
    f, got, pos = CellFramer(), [], 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        got += f.feed(stream[pos:pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    assert got == sent and f.buffered == 0


_KINDS = st.sampled_from(["relay1", "relay2", "padding", "destroy", "short", "badcmd"])


def _frame(kind: str, i: int) -> bytes:
    if kind == "short":
        return struct.pack(">H", 100) + bytes(100)
    if kind == "badcmd":
        return struct.pack(">H", CELL_SIZE) + struct.pack(">IB", 5, 77) + bytes(BODY_LEN)
    cmd = {"padding": CellCommand.PADDING, "destroy": CellCommand.DESTROY}.get(kind, CellCommand.RELAY)
    circ = 0 if kind == "padding" else (2 if kind == "relay2" else 1)
    return Cell(circ, cmd, bytes([i % 256]) * BODY_LEN).frame()


@settings(max_examples=60, deadline=None)
@given(st.lists(_KINDS, min_size=1, max_size=30), st.lists(st.integers(1, 9000), min_size=1, max_size=6))
def test_feed_runs_gives_the_cells_of_feed_with_relay_runs_grouped(kinds: list[str], cuts: list[int]) -> None:
    """feed_runs splits any stream into the same cells and errors, in the same order, as feed,
    with each maximal sequence of one circuit's RELAY cells as one RelayRun."""
    stream = b"".join(_frame(k, i) for i, k in enumerate(kinds))
    a, b = CellFramer(), CellFramer()
    plain: list[object] = []
    runs: list[object] = []
    pos = 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        plain += a.feed(stream[pos:pos + cut])
        runs += b.feed_runs(stream[pos:pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    expanded: list[object] = []
    for item in runs:
        expanded += item.cells() if isinstance(item, RelayRun) else [item]
    assert [str(x) if isinstance(x, CellError) else x for x in expanded] == \
        [str(x) if isinstance(x, CellError) else x for x in plain]
    assert a.buffered == b.buffered == 0
    whole = CellFramer().feed_runs(stream)        # within one feed, a run is maximal
    for x, y in zip(whole, whole[1:]):
        assert not (isinstance(x, RelayRun) and isinstance(y, RelayRun) and x.circ_id == y.circ_id)


def test_frame_relay_cells_is_the_cells_frames_back_to_back() -> None:
    bodies = [bytes([i]) * BODY_LEN for i in range(3)]
    assert frame_relay_cells(9, b"".join(bodies), 3) == b"".join(Cell(9, CellCommand.RELAY, b).frame() for b in bodies)
    assert frame_relay_cells(9, bodies[0], 1) == Cell(9, CellCommand.RELAY, bodies[0]).frame()
    run = CellFramer().feed_runs(frame_relay_cells(9, b"".join(bodies), 3))
    assert run == [RelayRun(9, b"".join(bodies), 3)]


def test_frame_of_a_full_body_is_the_length_prefixed_encoding() -> None:
    c = Cell(0xFFFF_FFFF, CellCommand.RELAY, bytes(range(256)) * 15 + bytes(BODY_LEN - 3840))
    assert c.frame() == struct.pack(">H", CELL_SIZE) + c.encode()
    with pytest.raises(ValueError, match="circ_id"):
        Cell(-1, CellCommand.RELAY, bytes(BODY_LEN)).frame()


def test_random_pool_never_repeats_bytes() -> None:
    pool = _RandomPool()
    chunks = [pool.take(4000) for _ in range(40)] + [pool.take(20000)]     # crosses refills
    assert all(len(c) == n for c, n in zip(chunks, [4000] * 40 + [20000]))
    assert len({c[:16] for c in chunks}) == len(chunks)
