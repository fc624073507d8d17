"""Block exchange between nodes: a small request/response protocol over a libp2p stream, `/openlora/blocks/1.0.0`.

Wire format (all lengths unsigned varints), on one stream, any number of rounds:
  request:  count, then `count` times (cid_len, cid bytes)                     count <= MAX_WANT
  response: for each requested CID, in order: 0x00, block_len, block bytes    (have it; block_len <= MAX_BLOCK)
                                          or  0x01                            (do not have it)
What it does: `BlockServer` answers from the local blockstore (re-verified on read); `fetch_dag_from_peer` walks a
DAG from its root asking one peer for the blocks the store lacks, level by level in batches over up to 2 streams,
verifying each block against its CID as it arrives and writing it to disk from a worker thread fed by a bounded
channel (memory: a few blocks plus stream buffers, whatever the file size); `fetch_with_failover` tries
several providers in turn, keeping what earlier ones delivered, with timeouts, and fails with an error that names
the CID and what each provider did.
What it does not do: bitswap (py-libp2p's bitswap client does not verify blocks against CIDs and its file fetch can
truncate), or find providers (`node.p2p.host` does, through the DHT and gossip).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from node.ipfs.cid import CID, DAG_PB, decode_varint, encode_varint, verify_block
from node.ipfs.dag import children
from node.ipfs.errors import BlockNotFoundError, BlockVerificationError, FetchError, IpfsError

log = logging.getLogger("openlora.p2p")

PROTOCOL = "/openlora/blocks/1.0.0"
MAX_WANT = 256
MAX_BLOCK = 2 << 20
BATCH = 64


class ExchangeError(IpfsError):
    """A peer broke the protocol or timed out."""


class _Reader:
    """Exact reads over a libp2p stream (whose read(n) returns whatever has arrived, up to n)."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            part = await self.stream.read(max(n - len(self.buf), 65536))
            if not part:
                raise EOFError("stream closed")
            self.buf += part

    async def exact(self, n: int) -> bytes:
        await self._fill(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def varint(self) -> int:
        raw = bytearray()
        while True:
            b = await self.exact(1)
            raw += b
            if not b[0] & 0x80:
                return decode_varint(bytes(raw))[0]
            if len(raw) > 9:
                raise ExchangeError("varint too long")


class BlockServer:
    """Serves blocks of `store` to peers. `tamper(cid, data) -> data | None` exists for tests of malicious peers."""

    def __init__(self, store, tamper: Callable[[CID, bytes], bytes | None] | None = None):
        self.store = store
        self.tamper = tamper
        self.served_blocks = 0

    async def handle(self, stream) -> None:
        reader = _Reader(stream)
        try:
            while True:
                try:
                    count = await reader.varint()
                except EOFError:
                    return
                if count > MAX_WANT:
                    raise ExchangeError(f"request for {count} blocks (max {MAX_WANT})")
                want = []
                for _ in range(count):
                    want.append(CID.from_bytes(await reader.exact(await reader.varint())))
                for cid in want:
                    data = self._get(cid)
                    if data is None:
                        await stream.write(b"\x01")
                    else:
                        await stream.write(b"\x00" + encode_varint(len(data)) + data)
                        self.served_blocks += 1
        except Exception as e:  # noqa: BLE001 - a misbehaving peer must not take the handler down with it
            log.debug("block server: peer stream ended: %r", e)
        finally:
            try:
                await stream.close()
            except Exception:  # noqa: BLE001
                pass

    def _get(self, cid: CID) -> bytes | None:
        try:
            data = self.store.get(cid)
        except IpfsError:
            return None
        return self.tamper(cid, data) if self.tamper else data


async def _request(stream, reader: _Reader, want: list[CID], sink: trio.MemorySendChannel, block_timeout: float,
                   on_block: Callable[[CID, int], None] | None) -> list[CID]:
    """One round on one stream: ask for `want`, verify each block as it arrives and hand it to the disk writer;
    return their children (parsed only from verified blocks)."""
    req = bytearray(encode_varint(len(want)))
    for cid in want:
        raw = cid.to_bytes()
        req += encode_varint(len(raw)) + raw
    with trio.fail_after(block_timeout):
        await stream.write(bytes(req))
    new: list[CID] = []
    for cid in want:
        with trio.fail_after(block_timeout):
            status = (await reader.exact(1))[0]
            if status == 1:
                raise BlockNotFoundError(cid, f"block {cid}: the peer does not have it")
            if status != 0:
                raise ExchangeError(f"block {cid}: bad status byte {status}")
            n = await reader.varint()
            if n > MAX_BLOCK:
                raise ExchangeError(f"block {cid}: peer sent {n} bytes, more than any block may hold")
            data = await reader.exact(n)
        verify_block(cid, data)  # raises BlockVerificationError: nothing of it is used or stored
        if on_block:
            on_block(cid, n)
        new.extend(children(cid, data))
        await sink.send((cid, data))
    return new


async def _disk_writer(store, blocks: trio.MemoryReceiveChannel) -> None:
    """Writes verified blocks in a worker thread, so file creation overlaps with reading the network."""
    async with blocks:
        async for cid, data in blocks:
            await trio.to_thread.run_sync(store.put_trusted, cid, data)


async def fetch_dag_from_peer(open_stream: Callable[[], Awaitable], root: CID, store, *,
                              block_timeout: float = 15.0, batch: int = BATCH, streams: int = 2,
                              max_bytes: int | None = None,
                              on_block: Callable[[CID, int], None] | None = None) -> int:
    """Fetch every block of `root` that `store` lacks from one peer, level by level of the DAG; the blocks of a
    level are requested in batches over up to `streams` parallel streams. More than `max_bytes` of blocks is refused
    (a peer cannot fill the disk with a huge DAG). Returns the number of blocks fetched."""
    received = [0]

    def count(cid: CID, n: int) -> None:
        received[0] += n
        if max_bytes is not None and received[0] > max_bytes:
            raise ExchangeError(f"{root}: the DAG is larger than the {max_bytes}-byte limit for an adapter")
        if on_block:
            on_block(cid, n)

    fetched = 0
    level = [root]
    seen: set[CID] = set()
    lanes: list[tuple[object, _Reader]] = []
    try:
        async with trio.open_nursery() as outer:
            sink, blocks = trio.open_memory_channel(8)  # at most 8 blocks (2 MiB) wait for the disk
            outer.start_soon(_disk_writer, store, blocks)
            async with sink:
                while level:
                    want, nxt = [], []
                    for cid in level:
                        if cid in seen:
                            continue
                        seen.add(cid)
                        if store.has(cid):
                            nxt.extend(children(cid, store.get(cid)) if cid.codec == DAG_PB else ())
                        else:
                            want.append(cid)
                    batches = [want[i:i + batch] for i in range(0, len(want), batch)]
                    while len(lanes) < min(streams, len(batches)):
                        with trio.fail_after(block_timeout):
                            s = await open_stream()
                        lanes.append((s, _Reader(s)))
                    results: list[list[CID]] = [[] for _ in batches]

                    async def lane(k: int) -> None:
                        stream, reader = lanes[k]
                        for b in range(k, len(batches), len(lanes)):
                            results[b] = await _request(stream, reader, batches[b], sink, block_timeout, count)

                    if batches:
                        async with trio.open_nursery() as nursery:
                            for k in range(len(lanes)):
                                nursery.start_soon(lane, k)
                    fetched += len(want)
                    level = nxt + [c for r in results for c in r]
    except BaseException as e:
        first = e
        while isinstance(first, BaseExceptionGroup):  # a lane's failure: re-raise the underlying error itself
            first = first.exceptions[0]
        with trio.move_on_after(1, shield=True):  # a failed peer gets a reset, not a polite close it may ignore
            for stream, _ in lanes:
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001
                    pass
        if first is e:
            raise
        raise first from None
    with trio.move_on_after(2):
        for stream, _ in lanes:
            try:
                await stream.close()
            except Exception:  # noqa: BLE001
                pass
    return fetched


async def fetch_with_failover(root: CID, store, providers: list, open_stream_to: Callable[[object], Awaitable],
                              **kw) -> int:
    """Try `providers` (peer ids) in order until the DAG is complete. Blocks from a failed provider that verified
    are kept; a corrupt block is never stored. Raises FetchError naming the root and each provider's failure."""
    if not providers:
        raise FetchError(f"no provider known for {root}")
    errors = []
    total = 0
    for peer in providers:
        try:
            total += await fetch_dag_from_peer(lambda: open_stream_to(peer), root, store, **kw)
            return total
        except trio.TooSlowError:
            errors.append(f"{peer}: timed out")
        except (BlockVerificationError, BlockNotFoundError, ExchangeError) as e:
            errors.append(f"{peer}: {e}")
        except (EOFError, Exception) as e:  # noqa: BLE001 - libp2p raises many types for a dead peer
            errors.append(f"{peer}: {type(e).__name__}: {e}")
        log.warning("fetch of %s from %s failed (%s); trying the next provider", root, peer, errors[-1])
    raise FetchError(f"could not fetch {root} from any of {len(providers)} providers: " + "; ".join(errors))
