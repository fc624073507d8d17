"""The buffered Noise session and yamux tuning of node.p2p.wire: framing across reads, corrupt and truncated input,
the wire format unchanged (py-libp2p's own Noise session and yamux read what ours write and the other way round)."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from noise.connection import Keypair, NoiseConnection

from openlora.node.ipfs.adapters import AdapterStore
from openlora.content.blockstore import Blockstore
from openlora.content.cid import CID
from openlora.node.p2p import wire
from openlora.node.p2p.exchange import PROTOCOL as BLOCKS_PROTOCOL
from openlora.node.p2p.exchange import BlockServer, fetch_dag_from_peer
from openlora.node.p2p.wire import BufferedNoiseSession, ByteQueue, NoiseFrameError, NoiseFrameParser, buffered


def _wire(messages: list[bytes]) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


def _splits(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        k = rng.randint(1, max_chunk)
        out.append(data[pos:pos + k])
        pos += k
    return out


# ---- NoiseFrameParser ---------------------------------------------------------------------------------------------

def test_parser_reassembles_messages_split_anywhere():
    rng = random.Random(7)
    messages = [os.urandom(n) for n in (16, 17, 65535, 300, 16, 65535, 4096, 70, 65519)]
    data = _wire(messages)
    for max_chunk in (1, 2, 3, 17, 1000, 65537, 200_000, len(data)):
        parser = NoiseFrameParser()
        got = []
        for chunk in _splits(data, rng, max_chunk):
            got += parser.feed(chunk)
        assert got == messages, max_chunk
        assert parser.pending == 0
    # a message cut right after its length, or inside its length
    parser = NoiseFrameParser()
    assert parser.feed(data[:1]) == [] and parser.pending == 1
    assert parser.feed(data[1:2]) == [] and parser.pending == 2
    assert parser.feed(data[2:2 + 16]) == [messages[0]] and parser.pending == 0


@pytest.mark.parametrize("cut", [None, 1, 2])
def test_parser_rejects_a_message_shorter_than_its_tag(cut):
    bad = (5).to_bytes(2, "big") + b"x" * 5
    data = _wire([os.urandom(40)]) + bad
    parser = NoiseFrameParser()
    with pytest.raises(NoiseFrameError, match="shorter than its 16-byte tag"):
        if cut is None:
            parser.feed(data)
        else:  # the bad length arrives split across reads
            split = len(data) - len(bad) + cut
            parser.feed(data[:split])
            parser.feed(data[split:])


# ---- ByteQueue ----------------------------------------------------------------------------------------------------

def test_byte_queue_hands_out_exact_lengths():
    rng = random.Random(3)
    chunks = [os.urandom(rng.randint(1, 5000)) for _ in range(200)]
    whole = b"".join(chunks)
    q = ByteQueue()
    for c in chunks:
        q.append(c)
    assert len(q) == len(whole)
    pos = 0
    while len(q):
        n = min(len(q), rng.choice([1, 3, 700, 4999, 5000, 12000]))
        part = q.take(n) if rng.random() < 0.5 else bytes(q.take_view(n))
        assert part == whole[pos:pos + n]
        pos += n
    assert pos == len(whole)
    with pytest.raises(ValueError):
        q.take(1)


def test_byte_queue_views_do_not_copy():
    a, b = os.urandom(1000), os.urandom(1000)
    q = ByteQueue()
    q.append(a)
    q.append(b)
    v = q.take_view(400)
    assert isinstance(v, memoryview) and v.obj is a
    assert q.take_view(600).obj is a
    assert q.take_view(1000) is b  # a whole chunk: the chunk itself


# ---- BufferedNoiseSession -----------------------------------------------------------------------------------------

def _noise_pair() -> tuple[NoiseConnection, NoiseConnection]:
    """Two Noise XX states (the protocol libp2p uses) after an in-memory handshake."""
    init = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
    resp = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
    init.set_as_initiator()
    resp.set_as_responder()
    for st in (init, resp):
        st.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
        st.start_handshake()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    assert init.handshake_finished and resp.handshake_finished
    return init, resp


class _Raw:
    """A raw connection: what is written is kept; reads return it in the chunk sizes `sizes` yields, then EOF."""

    def __init__(self, data: bytes = b"", sizes=None):
        self.written = bytearray()
        self.data = bytearray(data)
        self.sizes = sizes or (lambda: 1 << 30)
        self.write_calls = 0

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data
        self.write_calls += 1

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        k = min(n or len(self.data), self.sizes(), len(self.data))
        out = bytes(self.data[:k])
        del self.data[:k]
        return out

    async def close(self) -> None:
        pass


def _session(raw, state, ours: bool = True):
    stock = SecureSession(local_peer=None, local_private_key=None, remote_peer=None, remote_permanent_pubkey=None,
                          is_initiator=True, conn=NoiseTransportReadWriter(raw, state))
    return buffered(stock) if ours else stock


@pytest.mark.parametrize("writer_ours,reader_ours", [(True, True), (True, False), (False, True)])
def test_session_round_trip_and_py_libp2p_reads_what_it_writes(writer_ours, reader_ours):
    rng = random.Random(11)
    payloads = [os.urandom(n) for n in (1, 12, 65519, 65520, 262_160, 1_000_000, 5)]

    async def main():
        a, b = _noise_pair()
        out = _Raw()
        w = _session(out, a, writer_ours)
        assert isinstance(w, BufferedNoiseSession) == writer_ours
        for p in payloads:
            await w.write(p)
        if writer_ours:
            assert out.write_calls == len(payloads)  # one socket write per write(), however many Noise messages
        # every Noise message on the wire is within the format's limit
        msgs = NoiseFrameParser().feed(bytes(out.written))
        assert all(16 < len(m) <= 65535 for m in msgs)
        assert len(msgs) == sum(-(-len(p) // MAX_PLAINTEXT_LENGTH) for p in payloads)
        r = _session(_Raw(bytes(out.written), sizes=lambda: rng.randint(1, 100_000)), b, reader_ours)
        for p in payloads:  # read back in other sizes than written
            got = bytearray()
            while len(got) < len(p):
                got += await r.read(min(len(p) - len(got), rng.randint(1, 300_000)))
            assert bytes(got) == p

    trio.run(main)


def test_a_corrupt_message_is_a_clear_error_and_nothing_after_it_is_read():
    async def main():
        a, b = _noise_pair()
        out = _Raw()
        w = _session(out, a)
        await w.write(b"first message")
        await w.write(b"second message")
        data = bytearray(out.written)
        data[len(data) - 20] ^= 0x01  # a flipped bit in the second message's ciphertext
        r = _session(_Raw(bytes(data)), b)
        assert await r.read(len(b"first message")) == b"first message"
        with pytest.raises(NoiseFrameError, match="failed authentication"):
            await r.read(1)
        with pytest.raises(NoiseFrameError):  # the session stays broken
            await r.read(1)

    trio.run(main)


def test_end_of_stream_between_and_inside_messages():
    async def main():
        a, b = _noise_pair()
        out = _Raw()
        await _session(out, a).write(b"x" * 100)
        whole = bytes(out.written)
        _, b2 = _noise_pair()

        r = _session(_Raw(whole), b)
        assert await r.read(100) == b"x" * 100
        with pytest.raises(IncompleteReadError) as clean:
            await r.read(12)
        assert clean.value.is_clean_close  # closed between messages: a clean close for yamux

        a3, b3 = _noise_pair()
        out3 = _Raw()
        await _session(out3, a3).write(b"y" * 100)
        r = _session(_Raw(bytes(out3.written)[:50]), b3)  # the peer vanished mid-message
        with pytest.raises(IncompleteReadError) as cut:
            await r.read(10)
        assert not cut.value.is_clean_close

    trio.run(main)


# ---- yamux and the whole stack against py-libp2p's own -----------------------------------------------------------

def test_py_libp2p_never_awaits_inside_a_window_lock_block():
    """FastYamuxStream replaces `window_lock` by a signal that excludes nothing: correct only while every
    `async with ....window_lock:` block in py-libp2p's yamux is free of awaits (true of 0.8.1; re-check on upgrade)."""
    import ast
    import inspect

    from libp2p.stream_muxer.yamux import yamux

    tree = ast.parse(inspect.getsource(yamux))
    blocks = [node for node in ast.walk(tree) if isinstance(node, ast.AsyncWith)
              and any(ast.unparse(item.context_expr).endswith("window_lock") for item in node.items)]
    assert len(blocks) >= 4
    for node in blocks:
        inner = [n for stmt in node.body for n in ast.walk(stmt)
                 if isinstance(n, (ast.Await, ast.AsyncWith, ast.AsyncFor))]
        assert not inner, f"await inside a window_lock block at yamux.py line {node.lineno}"


def _stock_host():
    """A host built the way py-libp2p builds one by default for Noise + yamux (no code of ours underneath)."""
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    kp = create_new_key_pair()
    return new_host(key_pair=kp, sec_opt={PROTOCOL_ID: Transport(kp, noise_privkey=x25519().private_key)},
                    muxer_opt=create_yamux_muxer_option(), listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])


def _big_adapter(tmp_path: Path, size: int = 3_500_000) -> Path:
    d = tmp_path / "big-adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny", "r": 4}')
    (d / "adapter_model.safetensors").write_bytes(os.urandom(size))  # > 3 receive windows: many window updates
    return d


def test_fast_yamux_and_buffered_noise_interoperate_with_stock_py_libp2p(make_node, tmp_path):
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    ours = make_node("ours")
    cid = ours.store.add(_big_adapter(tmp_path))[0]
    stock_store = AdapterStore(tmp_path / "stock" / "ipfs")

    async def main():
        host = _stock_host()
        listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
        async with host.run([listen]):
            # a stock py-libp2p node fetches from ours (our big frames and window grants, its 64 KiB frames)
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.addrs[0])))
            peer = ID.from_base58(ours.peer_id)
            with trio.fail_after(60):
                n = await fetch_dag_from_peer(lambda: host.new_stream(peer, [BLOCKS_PROTOCOL]), CID.parse(str(cid)),
                                              stock_store.blocks)
            assert n > 10 and stock_store.complete(cid)
            muxed = host.get_network().connections[peer]
            muxed = muxed[0] if isinstance(muxed, list) else muxed
            assert type(muxed.muxed_conn).__name__ == "Yamux"  # the stock side really is stock
            assert type(muxed.muxed_conn.secured_conn).__name__ == "SecureSession"

            # ours fetches from a stock py-libp2p node serving the same blocks
            host.set_stream_handler(BLOCKS_PROTOCOL, BlockServer(stock_store.blocks).handle)
            addr = f"{host.get_addrs()[0]}"
            addr = addr if "/p2p/" in addr else f"{addr}/p2p/{host.get_id()}"
            client = make_node("client")
            await trio.to_thread.run_sync(client.connect, addr)
            with trio.fail_after(60):
                got = await trio.to_thread.run_sync(client.fetch, str(cid), [str(host.get_id())])
            assert got == n and client.store.complete(cid)
            ours_conn = await trio.to_thread.run_sync(client.bridge.call, _muxed_conn_of(client, str(host.get_id())))
            assert isinstance(ours_conn, wire.FastYamux)  # ...and our side really is ours
            assert isinstance(ours_conn.secured_conn, BufferedNoiseSession)

    trio.run(main)
    for c, data in ((c, ours.store.blocks.get(c)) for c in _all_blocks(ours.store.blocks, cid)):
        assert stock_store.blocks.get(c) == data


def _muxed_conn_of(svc, peer: str):
    async def get():
        from libp2p.peer.id import ID
        conns = svc.node.host.get_network().connections[ID.from_base58(peer)]
        return (conns[0] if isinstance(conns, list) else conns).muxed_conn
    return get


def _all_blocks(blocks: Blockstore, root) -> list[CID]:
    from openlora.content.dag import walk
    return [c for c, _ in walk(str(root), blocks.get)]


def test_a_writer_out_of_window_waits_for_the_update_and_the_reader_buffers_at_most_a_window(make_node):
    """A stream writer sends 6 MB in one write to a reader that reads slowly: the reader never holds more than its
    receive window (plus one frame in flight), and the writer resumes as soon as window is granted."""
    server = make_node("server")
    client = make_node("client")
    payload = os.urandom(6_000_000)
    seen = {"max_buffered": 0}

    async def handler(stream):
        await stream.write(payload)
        await stream.close()

    async def install():
        server.node.host.set_stream_handler("/openlora/test-window/1", handler)

    server.bridge.call(install)
    client.connect(server.addrs[0])

    async def read_all():
        from libp2p.peer.id import ID
        stream = await client.node.host.new_stream(ID.from_base58(server.peer_id), ["/openlora/test-window/1"])
        muxed = stream.muxed_stream
        assert isinstance(muxed, wire.FastYamuxStream)
        got = bytearray()
        with trio.fail_after(60):
            while len(got) < len(payload):
                await trio.sleep(0.002)  # a slow reader
                buf = muxed.conn.stream_buffers.get(muxed.stream_id, b"")
                seen["max_buffered"] = max(seen["max_buffered"], len(buf))
                got += await stream.read(200_000)
        await stream.close()
        return bytes(got)

    assert client.bridge.call(read_all) == payload
    assert seen["max_buffered"] <= wire.RECV_WINDOW
    assert threading.active_count() < 100


# ---- the block protocol's reader (node.p2p.exchange) over arbitrarily cut stream reads ---------------------------

class _Stream:
    """A libp2p-like stream whose reads return the prepared bytes in random sizes (up to what is asked)."""

    def __init__(self, data: bytes, rng: random.Random, max_piece: int):
        self.data, self.rng, self.max_piece = bytearray(data), rng, max_piece

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        k = min(n, self.rng.randint(1, self.max_piece), len(self.data))
        out = bytes(self.data[:k])
        del self.data[:k]
        return out


class _Store:
    def __init__(self, fail: bool = False):
        self.blocks, self.fail = {}, fail

    def put_trusted(self, cid, data):
        if self.fail:
            raise OSError("disk full")
        self.blocks[cid] = bytes(data)


def _answers(blocks: list[bytes], status: dict[int, bytes] | None = None) -> bytes:
    from openlora.content.cid import encode_varint
    out = bytearray()
    for i, b in enumerate(blocks):
        out += (status or {}).get(i) or (b"\x00" + encode_varint(len(b)) + b)
    return bytes(out)


def test_block_answers_cut_anywhere_are_verified_and_written():
    from openlora.content.cid import RAW
    from openlora.node.p2p.exchange import _BlockWriter, _read_blocks, _Reader

    blocks = [os.urandom(n) for n in (262_144, 1, 0, 1000, 262_144, 70_000)]
    cids = [CID.of(RAW, b) for b in blocks]
    for max_piece in (17, 4099, 65_536, 1 << 20):
        store = _Store()

        async def main():
            writer = _BlockWriter(store, depth=2)
            reader = _Reader(_Stream(_answers(blocks), random.Random(max_piece), max_piece))
            assert await _read_blocks(reader, cids, writer, 5.0, None) == []  # raw leaves: no children
            await writer.close()

        trio.run(main)
        assert store.blocks == dict(zip(cids, blocks)), max_piece


def test_block_answers_corrupt_missing_truncated_or_malformed_fail_clearly():
    from openlora.content.cid import RAW
    from openlora.node.ipfs.errors import BlockNotFoundError, BlockVerificationError
    from openlora.node.p2p.exchange import ExchangeError, _BlockWriter, _read_blocks, _Reader

    blocks = [os.urandom(5000) for _ in range(3)]
    cids = [CID.of(RAW, b) for b in blocks]
    corrupt = list(blocks)
    corrupt[1] = b"\xff" + corrupt[1][1:]
    cases = [
        (_answers(corrupt), BlockVerificationError, None),
        (_answers(blocks, {1: b"\x01"}), BlockNotFoundError, "does not have it"),
        (_answers(blocks, {1: b"\x07"}), ExchangeError, "bad status byte 7"),
        (_answers(blocks, {1: b"\x00" + b"\xff" * 9}), ExchangeError, "varint too long"),
        (_answers(blocks, {1: b"\x00\x80\x80\x80\x08"}), ExchangeError, "more than any block may hold"),
        (_answers(blocks)[:-10], EOFError, "stream closed"),  # the third block cut short
    ]
    for k, (data, exc, msg) in enumerate(cases):
        store = _Store()

        async def main():
            writer = _BlockWriter(store)
            try:
                await _read_blocks(_Reader(_Stream(data, random.Random(1), 3000)), cids, writer, 5.0, None)
            finally:
                await writer.close()

        with pytest.raises(exc, match=msg):
            trio.run(main)
        good_before = {cids[0], cids[1]} if exc is EOFError else {cids[0]}
        assert set(store.blocks) <= good_before, k  # only blocks that verified before the failure, never a bad one
        assert cids[0] in store.blocks


def test_a_disk_write_error_reaches_the_fetch():
    from openlora.content.cid import RAW
    from openlora.node.p2p.exchange import _BlockWriter, _read_blocks, _Reader

    blocks = [os.urandom(1000) for _ in range(20)]
    cids = [CID.of(RAW, b) for b in blocks]

    async def main():
        writer = _BlockWriter(_Store(fail=True), depth=2)
        try:
            await _read_blocks(_Reader(_Stream(_answers(blocks), random.Random(2), 500)), cids, writer, 5.0, None)
        finally:
            await writer.close()

    with pytest.raises(OSError, match="disk full"):
        trio.run(main)
