"""The old home of the verification workload and runs; the code lives in :mod:`dhtcart.verify`.

One client's workload is :mod:`dhtcart.verify.workload`, a whole run
:mod:`dhtcart.verify.run`, and the client process is started as
``python -m dhtcart.verify.client``. This module keeps
``from dhtcart.workload import verify_store`` (and the rest of its old public
names) working: the very same objects. New code imports them from
:mod:`dhtcart.verify`.
"""

from dhtcart.verify.run import VerifyRun, draw_keys, open_store, verify_store
from dhtcart.verify.workload import DEFAULT_RATE, MIX, WorkloadStats, run_workload

__all__ = [
    "DEFAULT_RATE",
    "MIX",
    "VerifyRun",
    "WorkloadStats",
    "draw_keys",
    "open_store",
    "run_workload",
    "verify_store",
]
