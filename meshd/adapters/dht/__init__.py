"""Private Kademlia DHT: the `kademlia` package wrapped with sealed datagrams and signed records.

``server.MeshDHT`` is the entry point; ``record`` and ``storage`` are pure; ``protocol``
and ``crawling`` hold the RPCs, the routing table and the lookups.
"""

from meshd.adapters.dht.record import AuthorDirectory, Record, StaticDirectory, key_digest
from meshd.adapters.dht.server import MeshDHT
from meshd.adapters.dht.storage import Outcome, RecordStore
from meshd.errors import DhtError, RecordError

__all__ = [
    "AuthorDirectory",
    "DhtError",
    "MeshDHT",
    "Outcome",
    "Record",
    "RecordError",
    "RecordStore",
    "StaticDirectory",
    "key_digest",
]
