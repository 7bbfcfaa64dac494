"""The old home of the linearizability checker; the code lives in :mod:`dhtcart.verify.checker`.

Kept so that ``from dhtcart.checker import check_history`` goes on working:
it re-exports the checker's public names, the very same objects. New code
imports them from :mod:`dhtcart.verify`.
"""

from dhtcart.verify.checker import (
    ANOMALY_KINDS,
    DEFAULT_MAX_STEPS,
    MAX_CONFIGURATIONS,
    Anomaly,
    CheckReport,
    Operation,
    check_file,
    check_history,
)

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_MAX_STEPS",
    "MAX_CONFIGURATIONS",
    "Anomaly",
    "CheckReport",
    "Operation",
    "check_file",
    "check_history",
]
