"""The node's persistent state: one SQLite file (WAL, apsw) per node."""

from meshd.adapters.store.db import Params, Store
from meshd.adapters.store.migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from meshd.adapters.store.tokens import (
    TokenStatus,
    claim_token,
    consume_token,
    list_tokens,
    record_token,
    token_used_by,
)

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
    "token_used_by",
]
