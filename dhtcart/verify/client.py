"""The client process of a verification run: ``python -m dhtcart.verify.client CONFIG INDEX``.

:func:`dhtcart.verify.run.verify_store` starts one per client. Each opens the
store itself (as a separate program would), records its own history file and
runs :func:`~dhtcart.verify.workload.run_workload` when told to go, so that
all clients start together. The package does not import this module: it is
only ever run as ``__main__``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dhtcart.verify.history import HistoryRecorder, HistoryWriter
from dhtcart.verify.run import open_store
from dhtcart.verify.workload import run_workload

__all__ = ["client_main"]


def client_main(argv: Sequence[str]) -> int:
    """``python -m dhtcart.verify.client CONFIG INDEX``: one client process of :func:`verify_store`.

    Opens the store, prints ``ready``, waits for ``go`` on stdin, runs the
    workload writing ``client-INDEX.jsonl`` beside CONFIG, and prints its
    :class:`WorkloadStats` as one JSON line.
    """
    config_path, index = argv
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    i = int(index)
    store = open_store(config["location"])
    try:
        with HistoryWriter(Path(config["dir"]) / f"client-{i}.jsonl") as sink:
            recorder = HistoryRecorder(store, sink, process=i)
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                return 1
            stats = run_workload(
                recorder,
                config["keys"],
                seconds=config["seconds"],
                seed=config["seed"] + i,
                value_prefix=f"{config['run']}:{i}:",
                rate=config["rate"],
                mix=config.get("mix"),
            )
    finally:
        store.close()
    print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - the client process
    sys.exit(client_main(sys.argv[1:]))
