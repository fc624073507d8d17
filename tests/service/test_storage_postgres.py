"""node.storage on what only PostgreSQL has (the shared behaviour runs on both backends in test_storage.py): the
URL forms operators write, connection errors that name the server but never the password, pooled connections
dropped by the server, fields too long for their column, and the schema's column types."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy.engine import make_url

from openlora.attribution.receipts import sign_receipt
from openlora.devnet.chain import free_port
from openlora.node.storage import Store, StorageError, engine_url
from tests.service.test_storage import NODE, REQ, _receipt


def test_url_forms():
    assert engine_url("postgresql://node:pw@db.internal:5432/openlora").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg2://node@db/openlora").drivername == "postgresql+psycopg2"
    assert engine_url("sqlite:////var/lib/node.db").drivername == "sqlite"
    with pytest.raises(StorageError, match="is not a database URL"):
        engine_url("db.internal:5432")


def test_bare_and_explicit_driver_urls_reach_the_same_server(postgres):
    url = postgres.create_database()
    a, b = Store(url), Store(url.replace("postgresql://", "postgresql+psycopg://"))
    assert a.dialect == b.dialect == "postgresql"
    assert a.use_nonce(REQ, 5) and not b.use_nonce(REQ, 5)
    a.close(), b.close()


def test_connection_errors_name_the_server_but_not_the_password(postgres):
    pytest.importorskip("psycopg")
    port = free_port()
    with pytest.raises(StorageError) as e:
        Store(f"postgresql://node:s3cret-pw@127.0.0.1:{port}/openlora")
    assert f"cannot open database postgresql+psycopg://node:***@127.0.0.1:{port}/openlora" in str(e.value)
    assert "s3cret-pw" not in str(e.value)
    with pytest.raises(StorageError, match='database "no_such_db" does not exist'):
        Store(postgres.url("no_such_db"))


def test_store_survives_the_server_dropping_its_connections(postgres):
    """An idle pooled connection killed server-side (a restart, a failover, idle_session_timeout): the next call
    gets a fresh connection instead of failing."""
    url = postgres.create_database()
    s = Store(url)
    assert s.use_nonce(REQ, 1)
    killed = postgres.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              f"WHERE datname = '{make_url(url).database}' AND pid <> pg_backend_pid()")
    assert killed and all(ok for (ok,) in killed)
    assert s.use_nonce(REQ, 2) and not s.use_nonce(REQ, 1)
    s.add_receipt(_receipt(1))
    assert s.counts()["pending"] == 1
    s.close()


def test_fields_too_long_or_with_nul_are_a_storage_error(postgres):
    """SQLite stores any length; PostgreSQL enforces VARCHAR(n) and refuses NUL: a StorageError, nothing stored."""
    s = Store(postgres.create_database())
    with pytest.raises(StorageError, match="does not fit the receipts table"):
        s.add_receipt(sign_receipt(replace(_receipt(1), request_id="r" * 101), NODE.key))
    with pytest.raises(StorageError, match="does not fit the receipts table"):
        s.add_receipt(sign_receipt(replace(_receipt(2), adapter_cid="bafy\x00"), NODE.key))
    s.add_receipt(_receipt(3))
    assert s.counts() == {"pending": 1, "submitted": 0, "settled": 0}
    s.close()


def test_schema_types(postgres):
    """Big numbers compare bytewise (collation "C") whatever the database's locale; times are BIGINT."""
    url = postgres.create_database()
    Store(url).close()
    rows = postgres.execute("SELECT table_name, column_name, data_type, collation_name "
                            "FROM information_schema.columns WHERE table_schema = 'public'",
                            database=make_url(url).database)
    cols = {(t, c): (d, coll) for t, c, d, coll in rows}
    for key in [("nonces", "nonce"), ("vouchers", "cap"), ("receipts", "price"), ("batches", "total")]:
        assert cols[key] == ("character varying", "C"), key
    for key in [("nonces", "used_at"), ("receipts", "created_at"), ("receipts", "seq"), ("batches", "block"),
                ("batches", "tx_nonce"), ("batches", "updated_at")]:
        assert cols[key][0] == "bigint", key
