"""The node's persistent state: one SQLite file (WAL, apsw) per node."""

from meshd.store.db import Params, Store
from meshd.store.migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from meshd.store.tokens import TokenStatus, claim_token, consume_token, list_tokens, record_token

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "Params",
    "Store",
    "TokenStatus",
    "claim_token",
    "consume_token",
    "list_tokens",
    "record_token",
]
