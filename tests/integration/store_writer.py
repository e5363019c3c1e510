"""Child process for test_store_crash: commit as fast as possible until killed.

Usage: ``python store_writer.py DB_PATH``. Each durable transaction inserts workload
``w<i>`` and an event with subject ``w<i>``; ``i`` is printed on its own line only
after COMMIT has returned, so every number the parent reads is a promise that the row
survives a crash. Numbering continues after the rows already in the file, so the
parent can kill and restart the writer on the same store.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from meshd.adapters.store import Store


def main() -> None:
    with Store.open(Path(sys.argv[1])) as store:
        i = int(store.scalar("SELECT count(*) FROM workloads"))
        while True:
            i += 1
            now = time.time()
            with store.transaction(durable=True):
                store.append_event(now, "crash.test", f"w{i}", {"i": i})
                store.execute(
                    "INSERT INTO workloads (id, name, spec, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'pending', ?, ?)",
                    (f"w{i}", f"crash-{i}", '{"cpus": 1}', now, now),
                )
            sys.stdout.write(f"{i}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
