"""py-libp2p 0.8.1 fix: Yamux's frame reader without its per-frame debug logging.

Symptom (upstream report form). `libp2p/stream_muxer/yamux/yamux.py: Yamux.handle_incoming`
formats its `logger.debug(f"...")` messages whether or not DEBUG is enabled: for every frame
it builds a dict of type names, a list of flag names and an f-string of the header, and the
DATA and WINDOW_UPDATE paths format several more f-strings of a stream's state (the f-string is
evaluated before `debug` looks at the level). Each frame's header is then read through
`read_exactly`, a bytearray and a `bytes()` copy. In an in-process request/reply loop between
two fognode overlays (200-byte frames, after node/p2pfix_noiseio.py), `handle_incoming`'s own
time was the largest Python item, 5.6 % of the process's samples, next to the socket calls.
Reproduction: py-spy on two hosts exchanging small frames on one stream, or on the daemons of
`python -m fognode.tools.bench.ledger`.

Fix. `LeanIncomingYamux(Yamux).handle_incoming` is py-libp2p's method, generated from its
source by removing the `logger.debug(...)` statements and the assignments that only fed them
(`type_names`, `flag_names`, `header_len`, `data_len`), with two more changes: a frame's
header is read by `_read_header` (from node/p2pfix_noiseio.py's decrypted bytes when the
session is a QuickNoiseSession, without a copy or a scheduler hop when they hold it; else
`read_exactly` as before) and a new stream is built through the module's `YamuxStream` name
(node/p2pfix_yamux.py rebinds it), as py-libp2p does. Every branch, state change, frame written,
INFO/WARNING/ERROR log and error path is the original's, in the same order; the pinned source
hash of the original (tests/node/test_p2pfix.py) says when this copy must be redone.
node/p2pfix_yamux.py's QuickYamux derives from it, so only fognode's connections use it.
"""
from __future__ import annotations

import struct

import libp2p.stream_muxer.yamux.yamux as _yamux_mod
import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.utils import read_exactly
from libp2p.network.connection.exceptions import RawConnError
from libp2p.stream_muxer.yamux.yamux import (FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN,
                                             GO_AWAY_CONN_GARBAGE_COLLECTED,
                                             GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL,
                                             GO_AWAY_PROTOCOL_ERROR, HEADER_SIZE,
                                             MAX_WINDOW_SIZE, TYPE_DATA, TYPE_GO_AWAY,
                                             TYPE_PING, TYPE_WINDOW_UPDATE,
                                             YAMUX_HEADER_FORMAT, Yamux, YamuxStream, logger)

from fognode.node.p2pfix_noiseio import QuickNoiseSession


class LeanIncomingYamux(Yamux):
    """Yamux whose frame reader formats no debug messages (module doc)."""

    async def _read_header(self) -> bytes:
        """One frame header: IncompleteReadError if the connection ends first."""
        conn = self.secured_conn
        if not isinstance(conn, QuickNoiseSession):
            return await read_exactly(conn, HEADER_SIZE)
        header = conn.take(HEADER_SIZE)
        if header is None:
            header = await conn.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                raise IncompleteReadError(
                    f"connection closed: {len(header)} of a {HEADER_SIZE}-byte frame header",
                    expected_bytes=HEADER_SIZE, received_bytes=len(header))
        return header

    async def handle_incoming(self) -> None:  # noqa: C901 (py-libp2p's, generated; module doc)
        while not self.event_shutting_down.is_set():
            try:
                try:
                    header = await self._read_header()
                except IncompleteReadError as e:
                    if e.is_clean_close:
                        logger.info(f'Yamux connection closed cleanly by peer {self.peer_id}')
                    else:
                        transport_type = 'unknown'
                        try:
                            if hasattr(self.secured_conn, 'conn_state'):
                                conn_state_method = getattr(self.secured_conn, 'conn_state')
                                if callable(conn_state_method):
                                    state = conn_state_method()
                                    if isinstance(state, dict):
                                        transport_type = state.get('transport', 'unknown')
                        except Exception:
                            pass
                        logger.warning(f'Yamux connection closed unexpectedly for peer {self.peer_id}: {e}. Transport: {transport_type}.')
                    self.event_shutting_down.set()
                    await self._cleanup_on_error()
                    break
                except Exception as e:
                    self.event_shutting_down.set()
                    await self._cleanup_on_error()
                    break
                if len(header) != HEADER_SIZE:
                    self.event_shutting_down.set()
                    await self._cleanup_on_error()
                    break
                version, typ, flags, stream_id, length = struct.unpack(YAMUX_HEADER_FORMAT, header)
                if typ == TYPE_DATA and length > MAX_WINDOW_SIZE:
                    logger.warning(f'Yamux: peer {self.peer_id} announced oversized DATA frame length={length} (> MAX_WINDOW_SIZE={MAX_WINDOW_SIZE}) on stream {stream_id} closing connection')
                    self.event_shutting_down.set()
                    await self._cleanup_on_error()
                    break
                if (typ == TYPE_DATA or typ == TYPE_WINDOW_UPDATE) and flags & FLAG_SYN:
                    syn_payload: bytes = b''
                    syn_payload_err: IncompleteReadError | None = None
                    if typ == TYPE_DATA and length > 0:
                        try:
                            syn_payload = await self._read_data_body(length)
                        except IncompleteReadError as e:
                            syn_payload_err = e
                            logger.error(f'Incomplete read for SYN data on stream {stream_id}: {e}')
                    rst_header: bytes | None = None
                    ack_header: bytes | None = None
                    new_stream_notify: YamuxStream | None = None
                    async with self.streams_lock:
                        if stream_id not in self.streams:
                            stream = _yamux_mod.YamuxStream(stream_id, self, False)
                            self.streams[stream_id] = stream
                            self.stream_buffers[stream_id] = bytearray()
                            self.stream_events[stream_id] = trio.Event()
                            if syn_payload_err is not None:
                                stream.recv_closed = True
                                stream.closed = True
                                self.stream_events[stream_id].set()
                            elif typ == TYPE_WINDOW_UPDATE and length > 0:
                                async with stream.window_lock:
                                    stream.send_window += length
                            elif typ == TYPE_DATA and length > 0:
                                self.stream_buffers[stream_id].extend(syn_payload)
                                stream.recv_window -= len(syn_payload)
                                if stream.recv_window < 0:
                                    logger.warning(f'Stream {stream_id}: peer exceeded receive window by {-stream.recv_window} bytes')
                                    stream.recv_window = 0
                                self.stream_events[stream_id].set()
                            if flags & FLAG_FIN:
                                stream.recv_closed = True
                                if stream.send_closed:
                                    stream.closed = True
                                self.stream_events[stream_id].set()
                                if stream.closed:
                                    self._finalize_stream_locked(stream, fully_closed=True)
                            if flags & FLAG_RST:
                                stream.closed = True
                                stream.reset_received = True
                                self.stream_events[stream_id].set()
                                self._finalize_stream_locked(stream, fully_closed=True)
                                new_stream_notify = stream
                            else:
                                ack_header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, 0)
                                new_stream_notify = stream
                        else:
                            rst_header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
                    if rst_header is not None:
                        await self._write_frame(rst_header)
                    elif ack_header is not None:
                        await self._write_frame(ack_header)
                        if new_stream_notify is not None:
                            await self.new_stream_send_channel.send(new_stream_notify)
                    elif new_stream_notify is not None:
                        await self.new_stream_send_channel.send(new_stream_notify)
                elif (typ == TYPE_DATA or typ == TYPE_WINDOW_UPDATE) and flags & FLAG_ACK:
                    ack_payload: bytes = b''
                    ack_payload_err: IncompleteReadError | None = None
                    if typ == TYPE_DATA and length > 0:
                        try:
                            ack_payload = await self._read_data_body(length)
                        except IncompleteReadError as e:
                            ack_payload_err = e
                            logger.error(f'Incomplete read for ACK data on stream {stream_id}: {e}')
                    async with self.streams_lock:
                        if stream_id in self.streams:
                            stream = self.streams[stream_id]
                            if typ == TYPE_WINDOW_UPDATE:
                                if length > 0:
                                    async with stream.window_lock:
                                        stream.send_window += length
                            elif typ == TYPE_DATA and length > 0:
                                if ack_payload_err is not None:
                                    stream.recv_closed = True
                                    stream.closed = True
                                    if stream_id in self.stream_events:
                                        self.stream_events[stream_id].set()
                                else:
                                    self.stream_buffers[stream_id].extend(ack_payload)
                                    self.streams[stream_id].recv_window -= len(ack_payload)
                                    if self.streams[stream_id].recv_window < 0:
                                        logger.warning(f'Stream {stream_id}: peer exceeded receive window by {-self.streams[stream_id].recv_window} bytes')
                                        self.streams[stream_id].recv_window = 0
                                    self.stream_events[stream_id].set()
                elif typ == TYPE_GO_AWAY:
                    error_code = length
                    if error_code == GO_AWAY_NORMAL:
                        pass
                    elif error_code == GO_AWAY_PROTOCOL_ERROR:
                        logger.error(f'Received GO_AWAY for peer{self.peer_id}: Protocol error')
                    elif error_code == GO_AWAY_INTERNAL_ERROR:
                        pass
                    elif error_code == GO_AWAY_CONN_GARBAGE_COLLECTED:
                        pass
                    else:
                        logger.warning(f'Received GO_AWAY for peer {self.peer_id}with unknown error code: {error_code}')
                    self.event_shutting_down.set()
                    await self._cleanup_on_error()
                    break
                elif typ == TYPE_PING:
                    if flags & FLAG_SYN:
                        ping_header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_ACK, 0, length)
                        await self._write_frame(ping_header)
                    elif flags & FLAG_ACK:
                        now = trio.current_time()
                        new_rtt = now - self._ping_sent_time
                        if self._rtt == 0.0:
                            self._rtt = new_rtt
                        else:
                            self._rtt = (self._rtt + new_rtt) / 2
                        self._ping_event.set()
                elif typ == TYPE_DATA:
                    try:
                        try:
                            data = await self._read_data_body(length) if length > 0 else b''
                        except IncompleteReadError as e:
                            logger.error(f'Incomplete read for data on stream {stream_id}: {e}')
                            async with self.streams_lock:
                                if stream_id in self.streams:
                                    stream = self.streams[stream_id]
                                    stream.recv_closed = True
                                    stream.closed = True
                                    if stream_id in self.stream_events:
                                        self.stream_events[stream_id].set()
                            continue
                        if data is None:
                            self.event_shutting_down.set()
                            await self._cleanup_on_error()
                            break
                        async with self.streams_lock:
                            if stream_id in self.streams:
                                self.stream_buffers[stream_id].extend(data)
                                self.streams[stream_id].recv_window -= len(data)
                                if self.streams[stream_id].recv_window < 0:
                                    logger.warning(f'Stream {stream_id}: peer exceeded receive window by {-self.streams[stream_id].recv_window} bytes')
                                    self.streams[stream_id].recv_window = 0
                                self.stream_events[stream_id].set()
                                if flags & FLAG_FIN:
                                    self.streams[stream_id].recv_closed = True
                                    if self.streams[stream_id].send_closed:
                                        self.streams[stream_id].closed = True
                                if flags & FLAG_RST:
                                    self.streams[stream_id].closed = True
                                    self.streams[stream_id].reset_received = True
                                    self.stream_events[stream_id].set()
                                if self.streams[stream_id].closed:
                                    self._finalize_stream_locked(self.streams[stream_id], fully_closed=True)
                    except trio.TooSlowError:
                        raise
                    except Exception as e:
                        logger.error(f'Error reading data for stream {stream_id}: {e}')
                        async with self.streams_lock:
                            if stream_id in self.streams:
                                self.streams[stream_id].recv_closed = True
                                if self.streams[stream_id].send_closed:
                                    self.streams[stream_id].closed = True
                                self.stream_events[stream_id].set()
                elif typ == TYPE_WINDOW_UPDATE:
                    increment = length
                    async with self.streams_lock:
                        if stream_id in self.streams:
                            stream = self.streams[stream_id]
                            async with stream.window_lock:
                                stream.send_window += increment
                            if flags & FLAG_FIN:
                                stream.recv_closed = True
                                if stream.send_closed:
                                    stream.closed = True
                                self.stream_events[stream_id].set()
                            if flags & FLAG_RST:
                                stream.closed = True
                                stream.reset_received = True
                                self.stream_events[stream_id].set()
                            if stream.closed:
                                self._finalize_stream_locked(stream, fully_closed=True)
            except trio.TooSlowError:
                logger.warning(f'Yamux: timed out reading DATA frame body for peer {self.peer_id}; closing connection')
                self.event_shutting_down.set()
                await self._cleanup_on_error()
                break
            except Exception as e:
                if isinstance(e, IncompleteReadError):
                    if e.is_clean_close:
                        logger.info(f'Yamux connection closed cleanly for peer {self.peer_id}')
                        self.event_shutting_down.set()
                        await self._cleanup_on_error()
                        break
                    else:
                        logger.warning(f'Incomplete read in handle_incoming for peer {self.peer_id}: {e}')
                elif isinstance(e, RawConnError):
                    error_msg = str(e)
                    if not error_msg.strip():
                        logger.info(f'RawConnError (empty) during cleanup for peer {self.peer_id} (normal connection shutdown)')
                    else:
                        logger.warning(f'RawConnError during connection handling for peer {self.peer_id}: {error_msg}')
                else:
                    logger.error(f'Error in handle_incoming for peer {self.peer_id}: ' + f'{type(e).__name__}: {str(e)}')
                if self.event_shutting_down.is_set() or isinstance(e, (RawConnError, OSError, IncompleteReadError, trio.ClosedResourceError, trio.BrokenResourceError)):
                    await self._cleanup_on_error()
                    break
                await trio.sleep(0.01)