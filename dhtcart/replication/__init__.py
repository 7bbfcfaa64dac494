"""Replication: N copies of every key, linearizable through failures (``docs/replication.md``).

==========================================  ==========================================================
module                                      owns
==========================================  ==========================================================
:mod:`~dhtcart.replication.placement`       which shards hold each key (replica lists, failure domains)
:mod:`~dhtcart.replication.protocol`        the decisions of a replicated read and write, without I/O
==========================================  ==========================================================

The shard side (decide, apply, commit, leases) is part of the fencing
protocol of :mod:`dhtcart.backends.fencing`; moving and restoring copies is
the rebalance coordinator's (:mod:`dhtcart.rebalance`).
"""

from dhtcart.replication.placement import MAX_REPLICAS, Placement, ReplicaMove, default_domain

__all__ = ["MAX_REPLICAS", "Placement", "ReplicaMove", "default_domain"]
