"""The node's durable state in SQL (SQLAlchemy 2.x Core): used request nonces, vouchers, receipts and batches.

What it does: `Store(database_url)` creates the tables (SQLite: WAL journal, synchronous=FULL, busy timeout, so a
write is durable when the call returns; PostgreSQL: `postgresql://` through psycopg 3, pooled connections checked
before use), under a lock (SQLite's write lock, a PostgreSQL advisory lock) so that nodes starting together on an
empty database do not race. Nonces are claimed atomically by a primary key (`use_nonce`), vouchers keep the
highest cap by a conditional upsert, receipts are the settlement outbox (pending -> submitted (in a batch being
settled) -> settled) and batches record what was (or is about to be) sent on chain, so a restarted node resumes
instead of settling twice. Per requester, a running total of the unsettled receipts' prices (`unsettled`, kept in
the same transactions, with the reservations of requests admitted but not served yet) answers the per-request
deposit / voucher check in one row read, and `reserve` checks and holds a request's maximum cost atomically with
its nonce. The same statements run on both dialects; only the upsert construct and the connection
setup differ.
What it does not do: talk to the chain (node.settlement), verify signatures (node.auth / attribution), or price
anything. Methods are blocking; from asyncio call the slow ones through `asyncio.to_thread`.

Big integers (caps, prices, weights up to 2**256) are stored as 78-digit zero-padded decimal strings: portable,
exact, and ordered like the numbers they hold (on PostgreSQL under the "C" collation, whatever the database's
locale). Times, block numbers and transaction nonces are 64-bit (BIGINT): PostgreSQL's INTEGER ends in 2038.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import (BigInteger, Column, Integer, LargeBinary, MetaData, String, Table, Text, create_engine, delete,
                        event, func, insert, inspect, select, text, update)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, NoSuchModuleError

from openlora.attribution.merkle import MerkleTree, leaf
from openlora.attribution.receipts import Receipt, checksum as cs, receipt_hash
from openlora.node.errors import NodeError

_W = 78  # digits of 2**256


class StorageError(NodeError):
    """The database cannot be opened or written (path, permissions, URL)."""


class _NonceUsed(Exception):
    """Internal: rolls back a reservation whose nonce was used."""


class _OverLimit(Exception):
    """Internal: rolls back a reservation that would exceed the requester's limit."""

    def __init__(self, total: int):
        super().__init__(total)
        self.total = total


def _evidence(text_: str | None) -> Any:
    """A stored receipt's evidence (written by this node; parsed strictly all the same)."""
    if not text_:
        return None
    from openlora.attribution.evidence import Evidence
    return Evidence.from_json(json.loads(text_))


def big(n: int) -> str:
    if not 0 <= n < 10**_W:
        raise StorageError(f"{n} does not fit a uint256")
    return str(n).zfill(_W)


Big = String(_W).with_variant(String(_W, collation="C"), "postgresql")  # a big() string; bytewise order
Time = BigInteger  # unix seconds (SQLite: INTEGER affinity, as before)
Seq = BigInteger().with_variant(Integer, "sqlite")  # BIGSERIAL; SQLite keeps INTEGER PRIMARY KEY (the rowid)

meta = MetaData()
nonces = Table("nonces", meta, Column("requester", String(42), primary_key=True),
               Column("nonce", Big, primary_key=True), Column("used_at", Time, nullable=False))
vouchers = Table("vouchers", meta, Column("requester", String(42), primary_key=True),
                 Column("node", String(42), nullable=False), Column("cap", Big, nullable=False),
                 Column("signature", LargeBinary, nullable=False), Column("updated_at", Time, nullable=False))
receipts = Table(
    "receipts", meta, Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("request_id", String(100), unique=True, nullable=False),
    Column("request_digest", LargeBinary, nullable=False), Column("requester", String(42), nullable=False, index=True),
    Column("node", String(42), nullable=False), Column("adapter_cid", String(200)),
    Column("prompt_tokens", Integer, nullable=False), Column("completion_tokens", Integer, nullable=False),
    Column("price", Big, nullable=False), Column("attribution", Text, nullable=False),
    Column("created_at", Time, nullable=False), Column("node_signature", LargeBinary, nullable=False),
    Column("receipt_hash", LargeBinary, nullable=False),
    Column("status", String(12), nullable=False, index=True),  # pending | submitted | settled
    Column("batch_id", String(66), index=True), Column("batch_index", Integer),
    Column("evidence", Text))   # attribution evidence (attribution/evidence.py) as JSON; NULL: static vector
batches = Table(
    "batches", meta, Column("batch_id", String(66), primary_key=True),
    Column("state", String(12), nullable=False, index=True),  # prepared | submitted | settled | failed
    Column("receipts_root", String(66), nullable=False), Column("receipt_count", Integer, nullable=False),
    Column("receipts_uri", Text, nullable=False), Column("debits", Text, nullable=False),
    Column("credits", Text, nullable=False), Column("total", Big, nullable=False),
    Column("tx_hash", String(66)), Column("tx_nonce", BigInteger), Column("block", BigInteger),
    Column("error", Text), Column("created_at", Time, nullable=False), Column("updated_at", Time, nullable=False))
# Per requester, the sum of the prices of its receipts not settled yet (what `unsettled_charges` answers for every
# signed request): kept up to date in the transactions that add receipts and settle batches, so a request's check
# reads one row however many receipts wait for settlement (a chain that is down lets them pile up).
unsettled = Table("unsettled", meta, Column("requester", String(42), primary_key=True),
                  Column("total", Big, nullable=False))
# Admitted requests not served yet: each holds its maximum cost against the requester (counted in `unsettled`)
# from admission, atomically with its nonce, until its receipt replaces it with the real price (or it is released:
# the request failed, or the node restarted before serving it). Without it, concurrent requests all passed the
# deposit / voucher check before any of them had a receipt.
reservations = Table("reservations", meta, Column("request_id", String(100), primary_key=True),
                     Column("requester", String(42), nullable=False, index=True),
                     Column("amount", Big, nullable=False), Column("created_at", Time, nullable=False))
_SCHEMA_LOCK = 0x6F6C6F72615F7462  # pg_advisory_xact_lock key held while creating the tables ("olora_tb")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _switch_to_wal(cur: Any, wait_s: float = 10.0) -> None:
    """Put the database in WAL mode (persistent in the file, so usually already done). The switch needs the file
    to itself, and SQLite answers "database is locked" at once, without its busy handler, when another connection
    opens it at that moment (nodes or threads starting together on a new database): retry for up to `wait_s`."""
    import sqlite3
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _create_private(path: Any) -> None:
    """Create a new SQLite file mode 0600 before SQLite does (it would follow the umask, usually 0644); SQLite gives
    its -wal and -shm files the database file's mode."""
    import os
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return
    except OSError as e:
        raise StorageError(f"cannot create the database file {path}: {e.strerror}") from None
    os.chmod(path, 0o600)       # in case the umask took bits off


def engine_url(database_url: str) -> URL:
    """The SQLAlchemy URL to connect with: a bare postgresql:// means the psycopg (3) driver, which the
    `postgres` extra installs, under any SQLAlchemy 2.x (2.0 would pick psycopg2); postgresql+DRIVER:// is kept."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise StorageError(f"storage.database_url {database_url!r} is not a database URL "
                           "(sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DBNAME)") from None
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


class Store:
    def __init__(self, database_url: str):
        self.url = database_url
        url = engine_url(database_url)
        shown = url.render_as_string(hide_password=True)  # error messages never carry the password
        self.dialect = url.get_backend_name()
        if self.dialect == "sqlite" and database_url.startswith("sqlite:///") and ":memory:" not in database_url:
            from pathlib import Path
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _create_private(Path(database_url.removeprefix("sqlite:///")))
        try:
            self.engine = create_engine(url, pool_pre_ping=self.dialect == "postgresql")
        except (ImportError, NoSuchModuleError) as e:
            extra = " (pip install 'openlora-node[postgres]')" if self.dialect == "postgresql" else ""
            raise StorageError(f"cannot open database {shown}: its driver is not installed: {e}{extra}") from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self._create_tables()
        except DBAPIError as e:  # unreachable server, no such database, wrong password, no CREATE permission
            self.engine.dispose()
            raise StorageError(f"cannot open database {shown}: {str(e.orig).strip()}") from None
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        self._upsert = upsert

    def _create_tables(self) -> None:
        """Create what is missing, checked again under a lock: nodes (or threads) starting together on an empty
        database would otherwise all see no table, and every CREATE TABLE but the first would fail."""
        with self.engine.connect() as c:
            if set(meta.tables) <= set(inspect(c).get_table_names()) and \
                    "evidence" in {col["name"] for col in inspect(c).get_columns("receipts")}:
                return  # the usual restart: nothing to create, no lock taken
        with self.engine.begin() as c:
            if self.dialect == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            elif self.dialect == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock; waits up to the busy timeout
            had = set(inspect(c).get_table_names())
            meta.create_all(c)
            if "receipts" in had and "evidence" not in {col["name"] for col in inspect(c).get_columns("receipts")}:
                c.exec_driver_sql("ALTER TABLE receipts ADD COLUMN evidence TEXT")   # before span attribution
            if "unsettled" not in had and "receipts" in had:
                # a database from before the running totals: sum its unsettled receipts once
                totals: dict[str, int] = {}
                for requester, price in c.execute(select(receipts.c.requester, receipts.c.price)
                                                  .where(receipts.c.status != "settled")):
                    totals[requester] = totals.get(requester, 0) + int(price)
                if totals:
                    c.execute(insert(unsettled), [dict(requester=k, total=big(v)) for k, v in totals.items()])

    def close(self) -> None:
        self.engine.dispose()

    # ---- nonces and vouchers -------------------------------------------------------------------------------

    def use_nonce(self, requester: str, nonce: int, voucher: tuple[str, int, bytes] | None = None) -> bool:
        """Claim (requester, nonce); False when it was used before (also by a racing thread or an earlier run).
        With `voucher` = (node, cumulative_cap, signature), the voucher is recorded (as `record_voucher`) in the same
        transaction: both are durable together, one commit, and nothing is recorded when the nonce was used."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(nonces).values(requester=requester.lower(), nonce=big(nonce),
                                                used_at=int(time.time())))
                if voucher is not None:
                    c.execute(self._voucher_upsert(requester, *voucher))
            return True
        except IntegrityError:
            return False

    def reserve(self, requester: str, nonce: int, request_id: str, amount: int, *, limit: int,
                voucher: tuple[str, int, bytes] | None = None) -> tuple[str, int]:
        """Admit one request, atomically: claim (requester, nonce), record the voucher, and hold `amount` (the
        request's maximum cost) against the requester, provided that its unsettled total (receipts not settled
        plus reservations, this one included) stays <= `limit` (what the voucher and the deposit allow).
        Returns ("ok", total after) | ("nonce_reused", 0) | ("over_limit", total before); on anything but "ok"
        nothing is written (a refused request does not burn its nonce). Concurrent calls are serialised by the
        running-total row (SQLite's write lock, PostgreSQL's row lock), so N racing requests cannot together
        exceed the limit."""
        key = requester.lower()
        try:
            with self.engine.begin() as c:
                try:
                    c.execute(insert(nonces).values(requester=key, nonce=big(nonce), used_at=int(time.time())))
                except IntegrityError:
                    raise _NonceUsed() from None
                if voucher is not None:
                    c.execute(self._voucher_upsert(requester, *voucher))
                before = self._locked_total(c, key)
                if before + amount > limit:
                    raise _OverLimit(before)
                if amount:
                    c.execute(insert(reservations).values(request_id=request_id, requester=key, amount=big(amount),
                                                          created_at=int(time.time())))
                    c.execute(update(unsettled).where(unsettled.c.requester == key)
                              .values(total=big(before + amount)))
                return "ok", before + amount
        except _NonceUsed:
            return "nonce_reused", 0
        except _OverLimit as e:
            return "over_limit", e.total
        except IntegrityError:  # the nonce insert of a racing transaction (PostgreSQL reports it at commit)
            return "nonce_reused", 0

    def release(self, request_id: str) -> int:
        """Drop the reservation of a request that will have no receipt (it failed before anything was served);
        returns the amount released (0 if there was none)."""
        with self.engine.begin() as c:
            return self._drop_reservation(c, request_id)

    def release_all_reservations(self) -> int:
        """At start-up: a reservation left by a previous run belongs to a request that run never finished (its
        receipt would have replaced it), so nothing is owed for it. Returns how many were released. Assumes one
        serving process per database: replicas sharing one would free each other's in-flight reservations."""
        with self.engine.connect() as c:
            ids = c.execute(select(reservations.c.request_id)).scalars().all()
        for rid in ids:
            self.release(rid)
        return len(ids)

    def reserved(self, requester: str) -> int:
        with self.engine.connect() as c:
            rows = c.execute(select(reservations.c.amount).where(reservations.c.requester == requester.lower()))
            return sum(int(a) for a in rows.scalars())

    def _drop_reservation(self, c: Any, request_id: str) -> int:
        row = c.execute(select(reservations.c.requester, reservations.c.amount)
                        .where(reservations.c.request_id == request_id)).first()
        if row is None:
            return 0
        c.execute(delete(reservations).where(reservations.c.request_id == request_id))
        self._add_unsettled(c, {row.requester: -int(row.amount)})
        return int(row.amount)

    def _locked_total(self, c: Any, key: str) -> int:
        """The requester's running total, its row locked for this transaction (created at 0 if missing)."""
        c.execute(self._upsert(unsettled).values(requester=key, total=big(0))
                  .on_conflict_do_nothing(index_elements=["requester"]))
        return int(c.execute(select(unsettled.c.total).where(unsettled.c.requester == key)
                             .with_for_update()).scalar_one())

    def record_voucher(self, requester: str, node: str, cumulative_cap: int, signature: bytes) -> None:
        """Keep the voucher with the highest cap (a lower or equal one is ignored)."""
        with self.engine.begin() as c:
            c.execute(self._voucher_upsert(requester, node, cumulative_cap, signature))

    def _voucher_upsert(self, requester: str, node: str, cumulative_cap: int, signature: bytes):
        row = dict(requester=requester.lower(), node=node.lower(), cap=big(cumulative_cap),
                   signature=bytes(signature), updated_at=int(time.time()))
        stmt = self._upsert(vouchers).values(**row)
        return stmt.on_conflict_do_update(index_elements=["requester"], set_={k: stmt.excluded[k] for k in
                                                                             ("node", "cap", "signature",
                                                                              "updated_at")},
                                          where=stmt.excluded.cap > vouchers.c.cap)

    def voucher(self, requester: str) -> tuple[int, bytes] | None:
        with self.engine.connect() as c:
            row = c.execute(select(vouchers.c.cap, vouchers.c.signature)
                            .where(vouchers.c.requester == requester.lower())).first()
        return (int(row.cap), bytes(row.signature)) if row else None

    # ---- receipts ------------------------------------------------------------------------------------------

    def add_receipt(self, r: Receipt) -> None:
        """Store a receipt as pending; committed (durable) when this returns. A duplicate request_id raises. The
        request's reservation (if any) is replaced by the receipt's price in the same transaction."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(receipts).values(
                    request_id=r.request_id, request_digest=bytes(r.request_digest), requester=r.requester.lower(),
                    node=r.node.lower(), adapter_cid=r.adapter_cid, prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens, price=big(r.price),
                    attribution=json.dumps([[a, str(w)] for a, w in r.attribution]), created_at=r.created_at,
                    node_signature=bytes(r.node_signature), receipt_hash=receipt_hash(r), status="pending",
                    evidence=json.dumps(r.evidence.to_json()) if r.evidence is not None else None))
                self._drop_reservation(c, r.request_id)
                if r.price:
                    self._add_unsettled(c, {r.requester.lower(): r.price})
        except IntegrityError:
            raise StorageError(f"a receipt for request {r.request_id} is already stored") from None
        except DataError as e:  # PostgreSQL only: a field longer than its column, or a NUL in a string
            raise StorageError(f"receipt {r.request_id!r} does not fit the receipts table: "
                               f"{str(e.orig).strip()}") from None

    @staticmethod
    def _receipt(row: Any) -> Receipt:
        return Receipt(request_id=row.request_id, request_digest=bytes(row.request_digest),
                       requester=cs(row.requester), node=cs(row.node), adapter_cid=row.adapter_cid,
                       prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                       price=int(row.price), attribution=tuple((cs(a), int(w)) for a, w in json.loads(row.attribution)),
                       created_at=row.created_at, node_signature=bytes(row.node_signature),
                       evidence=_evidence(row.evidence))

    def receipt(self, request_id: str) -> Receipt | None:
        with self.engine.connect() as c:
            row = c.execute(select(receipts).where(receipts.c.request_id == request_id)).first()
        return self._receipt(row) if row else None

    def get_receipt(self, request_id: str) -> dict | None:
        """Receipt fields (bytes as 0x-hex, big ints as strings) + status; once settled also batch_id, tx_hash,
        receipts_root, receipts_uri, block and the receipt's Merkle proof (list of 0x-hex)."""
        from openlora.attribution.receipts import receipt_to_json
        with self.engine.connect() as c:
            row = c.execute(select(receipts).where(receipts.c.request_id == request_id)).first()
            if row is None:
                return None
            out = receipt_to_json(self._receipt(row))
            out["status"] = row.status
            if row.status == "settled" and row.batch_id:
                b = c.execute(select(batches).where(batches.c.batch_id == row.batch_id)).one()
                hashes = c.execute(select(receipts.c.receipt_hash).where(receipts.c.batch_id == row.batch_id)
                                   .order_by(receipts.c.batch_index)).scalars().all()
                tree = MerkleTree.from_leaves([leaf(bytes(h)) for h in hashes])
                out.update(batch_id=row.batch_id, tx_hash=b.tx_hash, block=b.block, receipts_root=b.receipts_root,
                           receipts_uri=b.receipts_uri,
                           proof=["0x" + p.hex() for p in tree.proof(row.batch_index)])
        return out

    def unsettled_charges(self, requester: str) -> int:
        """Sum of the prices of this requester's receipts not settled yet (pending or in a batch in flight) plus the
        reservations of its requests admitted but not served yet: one row of the running totals, whatever the
        number of receipts waiting."""
        with self.engine.connect() as c:
            total = c.execute(select(unsettled.c.total).where(unsettled.c.requester == requester.lower())).scalar()
        return int(total) if total is not None else 0

    def _add_unsettled(self, c: Any, deltas: dict[str, int]) -> None:
        """Add `deltas` (requester -> wei, lower-case addresses) to the running totals, inside the caller's
        transaction, which must already have written (SQLite: so it holds the write lock and the read below
        cannot be raced; PostgreSQL: the row is locked FOR UPDATE)."""
        for requester in sorted(deltas):                  # a fixed order: two transactions never lock in reverse
            c.execute(self._upsert(unsettled).values(requester=requester, total=big(0))
                      .on_conflict_do_nothing(index_elements=["requester"]))
            old = c.execute(select(unsettled.c.total).where(unsettled.c.requester == requester)
                            .with_for_update()).scalar_one()
            new = int(old) + deltas[requester]
            if new < 0:
                raise StorageError(f"unsettled total of {requester} would go negative ({new}): the running totals "
                                   f"disagree with the receipts")
            c.execute(update(unsettled).where(unsettled.c.requester == requester).values(total=big(new)))

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "submitted": 0, "settled": 0}
        with self.engine.connect() as c:
            for status, n in c.execute(select(receipts.c.status, func.count()).group_by(receipts.c.status)):
                out[status] = n
        return out

    def pending(self, limit: int, requesters: list[str] | None = None, free: bool = False) -> list[Receipt]:
        """The oldest pending receipts, in arrival order; with `requesters`, only theirs (plus, with `free`, the
        zero-priced receipts of anyone)."""
        q = select(receipts).where(receipts.c.status == "pending")
        if requesters is not None:
            cond = receipts.c.requester.in_([r.lower() for r in requesters])
            q = q.where(cond | (receipts.c.price == big(0)) if free else cond)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(receipts.c.seq).limit(limit)).all()
        return [self._receipt(r) for r in rows]

    def pending_requesters(self) -> list[str]:
        """Distinct requesters (lower-case) with pending receipts to pay (price > 0)."""
        with self.engine.connect() as c:
            return list(c.execute(select(receipts.c.requester).where(receipts.c.status == "pending",
                                                                     receipts.c.price != big(0)).distinct())
                        .scalars())

    def unsettled_receipts(self) -> list[Receipt]:
        """Every receipt not settled yet (pending or in a batch in flight), in arrival order."""
        with self.engine.connect() as c:
            rows = c.execute(select(receipts).where(receipts.c.status != "settled").order_by(receipts.c.seq)).all()
        return [self._receipt(r) for r in rows]

    def oldest_pending_at(self) -> int | None:
        with self.engine.connect() as c:
            return c.execute(select(func.min(receipts.c.created_at)).where(receipts.c.status == "pending")).scalar()

    def mark_free_settled(self, request_ids: list[str]) -> None:
        """Zero-priced receipts that no batch will carry (nothing to debit): settled without a batch."""
        with self.engine.begin() as c:
            c.execute(update(receipts).where(receipts.c.request_id.in_(request_ids), receipts.c.status == "pending",
                                             receipts.c.price == big(0))       # no running total to change
                      .values(status="settled"))

    # ---- batches -------------------------------------------------------------------------------------------

    def create_batch(self, batch_id: str, request_ids: list[str], receipts_root: str, receipts_uri: str,
                     debits: list[dict], credits: dict[str, int], total: int) -> None:
        """Persist a batch and move its receipts (in Merkle order) to `submitted`, in one transaction."""
        now = int(time.time())
        with self.engine.begin() as c:
            c.execute(delete(batches).where(batches.c.batch_id == batch_id, batches.c.state == "failed"))
            c.execute(insert(batches).values(
                batch_id=batch_id, state="prepared", receipts_root=receipts_root, receipt_count=len(request_ids),
                receipts_uri=receipts_uri, debits=json.dumps(debits),
                credits=json.dumps({k: str(v) for k, v in credits.items()}), total=big(total),
                created_at=now, updated_at=now))
            for i, rid in enumerate(request_ids):
                n = c.execute(update(receipts).where(receipts.c.request_id == rid, receipts.c.status == "pending")
                              .values(status="submitted", batch_id=batch_id, batch_index=i)).rowcount
                if n != 1:
                    raise StorageError(f"receipt {rid} is not pending; batch {batch_id} not created")

    def set_batch(self, batch_id: str, **values: Any) -> None:
        """Update a batch's state / tx_hash / tx_nonce / block / error; state 'settled' also settles its receipts,
        'failed' puts them back to pending (they will be batched again)."""
        values["updated_at"] = int(time.time())
        with self.engine.begin() as c:
            c.execute(update(batches).where(batches.c.batch_id == batch_id).values(**values))
            if values.get("state") == "settled":
                settling: dict[str, int] = {}
                for requester, price in c.execute(select(receipts.c.requester, receipts.c.price).where(
                        receipts.c.batch_id == batch_id, receipts.c.status != "settled")):
                    settling[requester] = settling.get(requester, 0) - int(price)
                c.execute(update(receipts).where(receipts.c.batch_id == batch_id, receipts.c.status != "settled")
                          .values(status="settled"))
                self._add_unsettled(c, {k: v for k, v in settling.items() if v})
            elif values.get("state") == "failed":
                c.execute(update(receipts).where(receipts.c.batch_id == batch_id)
                          .values(status="pending", batch_id=None, batch_index=None))

    def open_batches(self) -> list[dict]:
        """Batches prepared or submitted but not confirmed yet (what a restarted node must resume), oldest first."""
        with self.engine.connect() as c:
            rows = c.execute(select(batches).where(batches.c.state.in_(("prepared", "submitted")))
                             .order_by(batches.c.created_at, batches.c.batch_id)).mappings().all()
        return [self._batch(r) for r in rows]

    def batch(self, batch_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(batches).where(batches.c.batch_id == batch_id)).mappings().first()
        return self._batch(row) if row else None

    def batch_receipts(self, batch_id: str) -> list[Receipt]:
        with self.engine.connect() as c:
            rows = c.execute(select(receipts).where(receipts.c.batch_id == batch_id)
                             .order_by(receipts.c.batch_index)).all()
        return [self._receipt(r) for r in rows]

    @staticmethod
    def _batch(row: Any) -> dict:
        d = dict(row)
        d["debits"] = json.loads(d["debits"])
        d["credits"] = {k: int(v) for k, v in json.loads(d["credits"]).items()}
        d["total"] = int(d["total"])
        return d
