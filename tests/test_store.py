"""The SQLite session store: schema versions, round trips, and refusing a newer schema."""

import sqlite3

import pytest

from cloudshell_fog.store import SCHEMA_VERSION, SqliteSessionStore, StoreError

RECORD = {"id": "a", "subject": "dev:1", "profile": "default", "ttl_seconds": 60, "image_ref": None,
          "created_at": 1.5, "seq": 1, "status": "running",
          "placement": {"region": "r", "node_id": "n", "tier": "fog", "reasons": ["fog-preferred"]},
          "termination": None, "ended_at": None}


def test_new_database_gets_the_current_schema(tmp_path):
    """Opening an empty file applies every migration and records the version."""
    store = SqliteSessionStore(str(tmp_path / "s" / "state.db"))
    assert store.version == SCHEMA_VERSION and store.ping()
    assert (tmp_path / "s" / "state.db").stat().st_mode & 0o077 == 0  # only the gateway reads it


def test_records_round_trip_and_are_removed(tmp_path):
    """A saved record loads back equal, JSON columns included; remove forgets it; reopen keeps it."""
    path = str(tmp_path / "state.db")
    store = SqliteSessionStore(path)
    store.save(RECORD)
    store.save({**RECORD, "id": "b", "seq": 2, "status": "terminated",
                "termination": {"reason": "exited", "exit_code": 3}, "ended_at": 9.0})
    store.close()
    again = SqliteSessionStore(path)
    assert again.load()[0] == RECORD
    assert again.load()[1]["termination"] == {"reason": "exited", "exit_code": 3}
    again.remove("a")
    assert [r["id"] for r in again.load()] == ["b"]


def test_a_newer_schema_is_refused(tmp_path):
    """A database written by a newer gateway is not touched."""
    path = str(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this gateway"):
        SqliteSessionStore(path)
