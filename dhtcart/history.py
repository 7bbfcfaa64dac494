"""The old home of the history recorder and files; the code lives in :mod:`dhtcart.verify.history`.

Kept so that ``from dhtcart.history import HistoryRecorder`` goes on working:
it re-exports the module's public names, the very same objects. New code
imports them from :mod:`dhtcart.verify`.
"""

from dhtcart.verify.history import (
    HistoryRecorder,
    HistoryWriter,
    KeyValueStore,
    encode_value,
    merge_histories,
    read_history,
)

__all__ = [
    "HistoryRecorder",
    "HistoryWriter",
    "KeyValueStore",
    "encode_value",
    "merge_histories",
    "read_history",
]
