"""Block exchange between nodes: a small request/response protocol over a libp2p stream, `/openlora/blocks/1.0.0`.

Wire format (all lengths unsigned varints), on one stream, any number of rounds:
  request:  count, then `count` times (cid_len, cid bytes)                     count <= MAX_WANT
  response: for each requested CID, in order: 0x00, block_len, block bytes    (have it; block_len <= MAX_BLOCK)
                                          or  0x01                            (do not have it)
What it does: `BlockServer` answers from the local blockstore (re-verified on read); `fetch_dag_from_peer` walks a
DAG from its root asking one peer for the blocks the store lacks, level by level in batches of 64 over up to 2
streams (each with its next request already sent while the current one is answered, so the peer never waits for
one), verifying each block against its CID as it arrives and writing it to disk from a writer thread fed by a
bounded queue (memory: a few blocks plus stream buffers and windows, whatever the file size);
`fetch_with_failover` tries several providers in turn, keeping what earlier ones delivered, with timeouts, and
fails with an error that names the CID and what each provider did.
What it does not do: bitswap (py-libp2p's bitswap client does not verify blocks against CIDs and its file fetch can
truncate), or find providers (`node.p2p.host` does, through the DHT and gossip).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Awaitable, Callable

import trio

from openlora.content.cid import CID, DAG_PB, encode_varint, verify_block
from openlora.content.dag import children
from openlora.node.ipfs.errors import BlockNotFoundError, BlockVerificationError, FetchError, IpfsError
from openlora.node.p2p.wire import ByteQueue

log = logging.getLogger("openlora.p2p")

PROTOCOL = "/openlora/blocks/1.0.0"
MAX_WANT = 256
MAX_CID = 64  # bytes of a binary CID in a request (ours are 36)
MAX_BLOCK = 2 << 20
BATCH = 64
STREAMS = 2
PIPELINE = 1  # requests a lane has outstanding beyond the one being answered
READ_AHEAD = 1 << 20  # bytes asked of a stream per read (it returns what has arrived, up to this)


class ExchangeError(IpfsError):
    """A peer broke the protocol or timed out."""


class _Reader:
    """Exact reads over a libp2p stream (whose read(n) returns whatever has arrived, up to n), reading ahead in
    chunks of up to READ_AHEAD bytes (what the stream holds: one call per chunk, not per field)."""

    def __init__(self, stream):
        self.stream = stream
        self.q = ByteQueue()

    async def _fill(self, n: int) -> None:
        q = self.q
        while len(q) < n:
            part = await self.stream.read(max(n - len(q), READ_AHEAD))
            if not part:
                raise EOFError("stream closed")
            q.append(part)

    async def exact(self, n: int) -> bytes:
        if len(self.q) < n:
            await self._fill(n)
        return self.q.take(n)

    async def byte(self) -> int:
        if not self.q:
            await self._fill(1)
        return self.q.take_view(1)[0]

    async def varint(self) -> int:
        value = shift = 0
        for _ in range(9):
            b = await self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
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
                    n = await reader.varint()
                    if n > MAX_CID:
                        raise ExchangeError(f"a CID of {n} bytes (max {MAX_CID})")
                    want.append(CID.from_bytes(await reader.exact(n)))
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


def _encode_request(want: list[CID]) -> bytes:
    req = bytearray(encode_varint(len(want)))
    for cid in want:
        raw = cid.to_bytes()
        req += encode_varint(len(raw)) + raw
    return bytes(req)


async def _send_request(stream, want: list[CID], block_timeout: float) -> None:
    with trio.fail_after(block_timeout):
        await stream.write(_encode_request(want))


async def _read_blocks(reader: _Reader, want: list[CID], writer: "_BlockWriter", block_timeout: float,
                       on_block: Callable[[CID, int], None] | None) -> list[CID]:
    """The answers to one request: verify each block as it arrives and hand it to the disk writer; return their
    children (parsed only from verified blocks). Each block must arrive within `block_timeout` of the previous step
    (trio.TooSlowError otherwise); waiting for the disk writer is not timed."""
    new: list[CID] = []
    with trio.CancelScope() as scope:  # one scope whose deadline moves per step (cheaper than a scope per block)
        for cid in want:
            scope.deadline = trio.current_time() + block_timeout
            status = await reader.byte()
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
            if cid.codec == DAG_PB:
                new.extend(children(cid, data))
            scope.deadline = math.inf
            await writer.put(cid, data)
    if scope.cancelled_caught:
        raise trio.TooSlowError
    return new


class _BlockWriter:
    """Writes verified blocks to the store from one thread of its own, so file creation and the copy into the page
    cache overlap with reading the network. At most `depth` blocks wait for it (memory stays a few blocks whatever
    the file size); `put` only involves trio when that many are waiting. A write error is raised by the next `put`
    or by `close`."""

    def __init__(self, store, depth: int = 8):
        self.store = store
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="openlora-block-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self.store.put_trusted(*item)
                except BaseException as e:  # noqa: BLE001 - handed to the trio side
                    self._error = e
            del item
            self._slots.release()

    async def put(self, cid: CID, data) -> None:
        if self._error is not None:
            raise self._error
        if not self._slots.acquire(blocking=False):
            await trio.to_thread.run_sync(self._slots.acquire, abandon_on_cancel=True)
        self._queue.put((cid, data))

    async def close(self) -> None:
        """Wait until every block handed over is written (shielded: at most `depth` blocks), then raise any write
        error."""
        self._queue.put(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
        if self._error is not None:
            raise self._error


async def fetch_dag_from_peer(open_stream: Callable[[], Awaitable], root: CID | list[CID], store, *,
                              block_timeout: float = 15.0, batch: int = BATCH, streams: int = STREAMS,
                              pipeline: int = PIPELINE, max_bytes: int | None = None,
                              on_block: Callable[[CID, int], None] | None = None) -> int:
    """Fetch every block of `root` that `store` lacks from one peer, level by level of the DAG; the blocks of a
    level are requested in batches over up to `streams` parallel streams. More than `max_bytes` of blocks is refused
    (a peer cannot fill the disk with a huge DAG). `root` may be a list of roots, fetched together (a Datanet
    version's rows: hundreds of one-block DAGs in a few batches). Returns the number of blocks fetched."""
    received = [0]

    def count(cid: CID, n: int) -> None:
        received[0] += n
        if max_bytes is not None and received[0] > max_bytes:
            raise ExchangeError(f"{root}: the DAG is larger than the {max_bytes}-byte limit for an adapter"
                                if isinstance(root, CID) else f"more than the {max_bytes}-byte limit was sent")
        if on_block:
            on_block(cid, n)

    fetched = 0
    level = list(root) if isinstance(root, (list, tuple)) else [root]
    seen: set[CID] = set()
    lanes: list[tuple[object, _Reader]] = []
    writer = _BlockWriter(store, depth=8)  # at most 8 blocks (2 MiB) wait for the disk
    try:
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
                # Pipelined: the request for a lane's next batch goes out before the answers to the current one are
                # read, so the peer always has the next request waiting when it finishes a batch.
                stream, reader = lanes[k]
                mine = list(range(k, len(batches), len(lanes)))
                for b in mine[:pipeline]:
                    await _send_request(stream, batches[b], block_timeout)
                for j, b in enumerate(mine):
                    if j + pipeline < len(mine):
                        await _send_request(stream, batches[mine[j + pipeline]], block_timeout)
                    results[b] = await _read_blocks(reader, batches[b], writer, block_timeout, count)

            if batches:
                async with trio.open_nursery() as nursery:
                    for k in range(len(lanes)):
                        nursery.start_soon(lane, k)
            fetched += len(want)
            level = nxt + [c for r in results for c in r]
        await writer.close()  # every verified block is on disk before this returns
    except BaseException as e:
        try:
            await writer.close()  # the verified blocks already handed over are kept
        except Exception:  # noqa: BLE001 - the fetch's own error is the one to report
            pass
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


async def fetch_with_failover(root: CID | list[CID], store, providers: list,
                              open_stream_to: Callable[[object], Awaitable], **kw) -> int:
    """Try `providers` (peer ids) in order until the DAG is complete. Blocks from a failed provider that verified
    are kept; a corrupt block is never stored. Raises FetchError naming the root and each provider's failure."""
    label = root if isinstance(root, CID) else f"{root[0]}" if len(root) == 1 else f"{len(root)} DAGs ({root[0]}, ...)"
    if not providers:
        raise FetchError(f"no provider known for {label}")
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
        log.warning("fetch of %s from %s failed (%s); trying the next provider", label, peer, errors[-1])
    raise FetchError(f"could not fetch {label} from any of {len(providers)} providers: " + "; ".join(errors))
