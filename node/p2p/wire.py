"""Leaner byte paths under py-libp2p for bulk block transfers: a buffered Noise session and a tuned yamux.

Why: py-libp2p 0.8.1 reads a Noise transport message with two socket calls (its 2-byte length, then the body, each
behind a trio lock) and writes each one with its own socket call; a 100 MB block fetch is ~3,500 such messages per
side, and that per-message machinery, not ChaCha20-Poly1305, was most of a fetch's CPU (docs/benchmarks.md).
What it does: `BufferedNoiseTransport` is py-libp2p's Noise transport (same XX handshake, same keys, same wire
format: 2-byte big-endian length + ChaCha20-Poly1305 message of at most 65,535 bytes); once the handshake is done
it returns a `BufferedNoiseSession`, which reads the socket in large chunks and decrypts every complete message in
each chunk (`NoiseFrameParser` splits them, keeping a message cut between two reads), and writes a whole `write()`
(split into <= 65,519-byte plaintext pieces, each its own Noise message) with one socket call. A message shorter
than its 16-byte tag, or one that fails authentication, raises `NoiseFrameError` (a `RawConnError`, so the muxer
closes the connection) and every later read raises it again: nothing after a corrupt message is ever delivered.
`FastYamux` (installed on a host by `use_fast_yamux`) is py-libp2p's yamux with bigger frames, one Noise write per
stream write, event-driven send window and a fixed receive window (see the comment before it).
What it does not do: change the handshake, the cipher, the security checks or the yamux protocol (they are
py-libp2p's and the `noise` library's; stock py-libp2p peers interoperate, tested), or touch the py-libp2p files;
the host still offers Noise only.
"""

from __future__ import annotations

import logging
import struct
from collections import deque

import trio
from libp2p import create_yamux_muxer_option
from libp2p.io.exceptions import IncompleteReadError
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux import yamux as _yamux

log = logging.getLogger("openlora.p2p")

NOISE_TAG = 16           # Poly1305 tag: every Noise transport message carries one
READ_SIZE = 256 * 1024   # bytes asked of the socket per read (it returns what has arrived, up to this)


async def _acquire(lock: trio.Lock) -> None:
    """Take `lock`, without a scheduling round trip when it is free (trio's `acquire` always checkpoints), which
    it is unless two tasks write to the same connection at once."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


class NoiseFrameError(RawConnError):
    """A Noise transport message that cannot be valid: shorter than its tag, or failing authentication."""


class ByteQueue:
    """A FIFO of byte chunks that hands out exact lengths with as few copies as possible.

    `append(chunk)` keeps the chunk itself (no copy). `take(n)` returns n bytes as `bytes`: the chunk itself when it
    is exactly what is asked for, otherwise one copy (a slice, or a join of the pieces of several chunks).
    `take_view(n)` is `take` that returns a zero-copy memoryview when the n bytes lie in one chunk (the view keeps
    that chunk alive). `len(q)` is the number of bytes held."""

    __slots__ = ("_parts", "_off", "_size")

    def __init__(self) -> None:
        self._parts: deque[bytes] = deque()
        self._off = 0      # bytes of _parts[0] already handed out
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> None:
        if chunk:
            self._parts.append(chunk)
            self._size += len(chunk)

    def take(self, n: int) -> bytes:
        out = self.take_view(n)
        return out if type(out) is bytes else bytes(out)

    def take_view(self, n: int) -> bytes | memoryview:
        if n > self._size:
            raise ValueError(f"take({n}) from a queue holding {self._size} bytes")
        if n <= 0:
            return b""
        parts = self._parts
        first, off = parts[0], self._off
        rem = len(first) - off
        self._size -= n
        if n < rem:
            self._off = off + n
            return memoryview(first)[off:off + n]
        parts.popleft()
        self._off = 0
        if n == rem:
            return first if off == 0 else memoryview(first)[off:]
        pieces = [memoryview(first)[off:]]
        need = n - rem
        while need:
            p = parts[0]
            if len(p) <= need:
                pieces.append(p)
                parts.popleft()
                need -= len(p)
            else:
                pieces.append(memoryview(p)[:need])
                self._off = need
                need = 0
        return b"".join(pieces)

    def take_all(self) -> bytes:
        return self.take(self._size)


class NoiseFrameParser:
    """Splits a byte stream into Noise transport messages (2-byte big-endian length, then that many bytes).

    `feed(chunk)` returns the complete messages (ciphertext, as bytes) in order and keeps a message cut between
    chunks until the rest arrives. `pending` is the number of bytes held of an incomplete message."""

    def __init__(self) -> None:
        self._partial = bytearray()

    @property
    def pending(self) -> int:
        return len(self._partial)

    @staticmethod
    def _check(n: int) -> None:
        if n < NOISE_TAG:
            raise NoiseFrameError(f"noise message of {n} bytes is shorter than its {NOISE_TAG}-byte tag: "
                                  f"the peer sent a corrupt or non-Noise stream")

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(data)
        p = self._partial
        if p:  # finish the message cut at the end of the previous chunk
            if len(p) < 2:
                take = min(2 - len(p), end)
                p += data[:take]
                pos = take
                if len(p) < 2:
                    return out
                self._check(p[0] << 8 | p[1])
            need = 2 + (p[0] << 8 | p[1]) - len(p)
            take = min(need, end - pos)
            p += data[pos:pos + take]
            pos += take
            if take < need:
                return out
            out.append(bytes(p[2:]))
            self._partial = bytearray()
        while end - pos >= 2:
            n = data[pos] << 8 | data[pos + 1]
            self._check(n)
            if end - pos - 2 < n:
                break
            out.append(data[pos + 2:pos + 2 + n])
            pos += 2 + n
        if pos < end:
            if end - pos >= 2:
                self._check(data[pos] << 8 | data[pos + 1])
            self._partial = bytearray(data[pos:])
        return out


class BufferedNoiseSession(SecureSession):
    """A Noise transport session (post-handshake) with batched socket reads and one socket write per `write`.

    Same interface and wire format as py-libp2p's `SecureSession`: `read(n)` returns exactly n bytes (raising
    `IncompleteReadError` if the connection ends first; `received_bytes == 0` means a clean close between
    messages), `read()` returns whatever is decrypted and waiting (at least one byte), `write(data)` sends all of
    `data`."""

    def __init__(self, base: SecureSession, raw, noise_state, read_size: int = READ_SIZE) -> None:
        super().__init__(local_peer=base.local_peer, local_private_key=base.local_private_key,
                         remote_peer=base.remote_peer, remote_permanent_pubkey=base.remote_permanent_pubkey,
                         is_initiator=base.is_initiator, conn=base.conn)
        self._raw = raw
        self._noise = noise_state
        self._read_size = read_size
        self._parser = NoiseFrameParser()
        self._plain = ByteQueue()
        self._broken: NoiseFrameError | None = None
        self._write_lock = trio.Lock()

    # ---- read -----------------------------------------------------------------------------------------------------

    async def _fill(self, n: int) -> None:
        """Read and decrypt until at least `n` plaintext bytes wait in the buffer."""
        plain = self._plain
        while len(plain) < n:
            if self._broken is not None:
                raise self._broken
            chunk = await self._raw.read(self._read_size)
            if not chunk:
                got = len(plain) + self._parser.pending
                raise IncompleteReadError(f"connection closed: expected {n} bytes, {got} arrived",
                                          expected_bytes=n, received_bytes=got)
            # Messages before a bad one were authenticated and are still delivered; the bad one and everything
            # after it never are (the loop raises once the good bytes are used up).
            try:
                for msg in self._parser.feed(chunk):
                    plain.append(self._noise.decrypt(msg))
            except NoiseFrameError as e:
                self._broken = e
            except Exception as e:  # noqa: BLE001 - the noise library's NoiseInvalidMessage (or a nonce error)
                self._broken = NoiseFrameError(f"noise message failed authentication ({type(e).__name__}: {e}): "
                                               f"corrupt or forged data; the connection is dropped")
                self._broken.__cause__ = e

    @property
    def buffered(self) -> int:
        """Decrypted bytes waiting to be read (a read of at most this many returns without waiting)."""
        return len(self._plain)

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        plain = self._plain
        if n is None or n < 0:
            if not plain:
                await self._fill(1)
            return plain.take_all()
        if len(plain) < n:
            await self._fill(n)
        return plain.take(n)

    # ---- write ----------------------------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        # Encrypting consumes nonces in order, so encryption and the socket write happen under one lock.
        lock = self._write_lock
        await _acquire(lock)
        try:
            encrypt = self._noise.encrypt
            if len(data) <= MAX_PLAINTEXT_LENGTH:
                ct = encrypt(bytes(data))
                out = len(ct).to_bytes(2, "big") + ct
            else:
                parts = []
                for i in range(0, len(data), MAX_PLAINTEXT_LENGTH):
                    ct = encrypt(bytes(data[i:i + MAX_PLAINTEXT_LENGTH]))
                    parts.append(len(ct).to_bytes(2, "big"))
                    parts.append(ct)
                out = b"".join(parts)
            await self._raw.write(out)
        finally:
            lock.release()


def buffered(session):
    """`session` as a `BufferedNoiseSession` when it is py-libp2p's Noise `SecureSession`; otherwise unchanged."""
    conn = getattr(session, "conn", None)
    if type(session) is SecureSession and isinstance(conn, NoiseTransportReadWriter):
        raw = conn.read_writer.read_write_closer
        return BufferedNoiseSession(session, raw, conn.noise_state)
    log.debug("noise session of type %s left as it is", type(session).__name__)
    return session


class BufferedNoiseTransport(NoiseTransport):
    """py-libp2p's Noise transport whose sessions are `BufferedNoiseSession`s (the handshake is py-libp2p's)."""

    async def secure_inbound(self, conn):
        return buffered(await super().secure_inbound(conn))

    async def secure_outbound(self, conn, peer_id):
        return buffered(await super().secure_outbound(conn, peer_id))


# ---- yamux ------------------------------------------------------------------------------------------------------
#
# py-libp2p's yamux writes at most 64 KiB per frame, each frame one Noise write (a 64 KiB frame is two Noise
# messages: 65,519 + 17 bytes); a writer out of send window polls for it every 10 ms; receive window is granted by an
# RTT-based auto-tuner (up to 16 MiB per stream); every window check takes a trio lock (a scheduling round trip).
# `FastYamux` keeps py-libp2p's frame parser (`handle_incoming`), stream bookkeeping and every protocol rule, and
# changes only that: a write is cut into DATA frames of at most 256 KiB (the spec's initial window, which any yamux
# receiver must take in one frame; never more than the send window the peer granted), and all frames of one write
# go out as one Noise write; a writer out of send window sleeps until the peer's WINDOW_UPDATE is processed; a
# stream's receive window is a fixed RECV_WINDOW, re-granted when half of it has been read.

FRAME_MAX = 256 * 1024          # payload bytes per DATA frame
RECV_WINDOW = 1 << 20           # receive window per stream (the spec's default is 256 KiB)
SEND_WINDOW_WAIT_S = 5.0        # as py-libp2p: a peer that grants no window for this long fails the write
_HEADER = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)


class _WindowSignal:
    """Stands in for a YamuxStream's `window_lock`. Every `async with window_lock:` block in py-libp2p 0.8.1's yamux
    only reads or adjusts window counters, with no await inside, so under trio's cooperative scheduling the lock
    excludes nothing; this one costs no scheduling round trip, and wakes a writer waiting for send window when such
    a block ends (that is where an incoming WINDOW_UPDATE adds to `send_window`)."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: trio.Event | None = None

    async def __aenter__(self) -> "_WindowSignal":
        return self

    async def __aexit__(self, *exc) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            w.set()


class FastYamuxStream(_yamux.YamuxStream):
    """A yamux stream with batched framing and fixed receive window (see above). Made from py-libp2p's stream by
    `FastYamux` (`adopt`), so that the connection's frame handler, which builds inbound streams itself, needs no
    change."""

    @classmethod
    def adopt(cls, stream: _yamux.YamuxStream) -> "FastYamuxStream":
        if type(stream) is _yamux.YamuxStream:
            stream.__class__ = cls
            stream.window_lock = _WindowSignal()
        return stream

    # ---- write ----------------------------------------------------------------------------------------------------

    async def _wait_send_window(self) -> None:
        signal: _WindowSignal = self.window_lock
        with trio.move_on_after(SEND_WINDOW_WAIT_S) as scope:
            while self.send_window <= 0 and not self.closed:
                signal.waiter = waiter = trio.Event()
                with trio.move_on_after(0.05):  # also notice a reset or a dead connection, which signal nothing here
                    await waiter.wait()
        if scope.cancelled_caught:
            raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

    async def write(self, data: bytes) -> None:
        total = len(data)
        sent = 0
        while sent < total:
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            if self.closed:
                raise MuxedStreamError("Stream is closed")
            if self.send_window <= 0:
                await self._wait_send_window()
                continue
            parts = []
            budget = min(self.send_window, total - sent)
            self.send_window -= budget
            end = sent + budget
            while sent < end:
                k = min(FRAME_MAX, end - sent)
                parts.append(_HEADER.pack(0, _yamux.TYPE_DATA, 0, self.stream_id, k))
                parts.append(data[sent:sent + k])
                sent += k
            await self.conn._write_frame(b"".join(parts))

    # ---- read -----------------------------------------------------------------------------------------------------

    async def read(self, n: int | None = -1) -> bytes:
        buf = self.conn.stream_buffers.get(self.stream_id)
        if buf and not self.reset_received and not self.closed:
            if n is None or n < 0 or n >= len(buf):
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:n])
                del buf[:n]
        else:  # nothing buffered, or a closing stream: py-libp2p's path (waits; EOF, reset and cleanup rules)
            data = await self.conn.read_stream(self.stream_id, -1 if n is None else n)
        if not self.recv_closed and not self.closed:
            # Grant the peer what keeps (its credit + what waits unread here) at RECV_WINDOW, once that is at
            # least half a window: a few updates per MiB read, not one per read.
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = RECV_WINDOW - (self.recv_window + buffered)
            if delta >= RECV_WINDOW // 2:
                self.recv_window += delta
                await self.send_window_update(delta)
        return data


class FastYamux(_yamux.Yamux):
    """py-libp2p's yamux connection with `FastYamuxStream` streams, a lean frame writer and a zero-copy path for
    DATA bodies already decrypted by a `BufferedNoiseSession`."""

    async def _write_frame(self, data: bytes) -> None:
        lock = self._write_lock
        await _acquire(lock)
        try:
            await self.secured_conn.write(data)
        finally:
            lock.release()

    async def _read_data_body(self, length: int) -> bytes:
        conn = self.secured_conn
        if isinstance(conn, BufferedNoiseSession):
            if conn.buffered >= length:  # already decrypted: no wait, so no timeout scope to set up
                return await conn.read(length)
            with trio.fail_after(_yamux._yamux_data_read_timeout()):
                return await conn.read(length)
        return await super()._read_data_body(length)

    async def open_stream(self):
        return FastYamuxStream.adopt(await super().open_stream())

    async def accept_stream(self):
        return FastYamuxStream.adopt(await super().accept_stream())


class FastMuxerMultistream(MuxerMultistream):
    """py-libp2p's muxer negotiation (yamux first, mplex as its fallback), whose yamux connections are `FastYamux`.
    (py-libp2p's negotiation builds its own `Yamux` whatever class the options name, so the new connection, not yet
    started, is adopted here.)"""

    def __init__(self) -> None:
        super().__init__(create_yamux_muxer_option())

    async def new_conn(self, conn, peer_id):
        muxed = await super().new_conn(conn, peer_id)
        if type(muxed) is _yamux.Yamux:
            muxed.__class__ = FastYamux
        return muxed


def use_fast_yamux(host) -> None:
    """Make every yamux connection `host` sets up from now on a `FastYamux` (call before it listens or dials)."""
    host.get_network().upgrader.muxer_multistream = FastMuxerMultistream()
