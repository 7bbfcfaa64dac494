"""Changing who owns what: plans, the hand-over protocol, and the coordinator that drives them.

==================================  ==================================================
module                              owns
==================================  ==================================================
:mod:`~dhtcart.rebalance.plan`       what a rebalance would move, and what it did
:mod:`~dhtcart.rebalance.mover`      the hand-over protocol, batch by batch, state-driven
:mod:`~dhtcart.rebalance.coordinator` creating a store, rebalancing, finishing, retiring, status
==================================  ==================================================
"""

from dhtcart.rebalance.coordinator import Coordinator, RebalanceStatus
from dhtcart.rebalance.mover import MAX_RANGES_PER_BATCH, Migration, Mover
from dhtcart.rebalance.plan import Progress, RebalancePlan, RebalanceReport, estimate_keys, plan
from dhtcart.settings import DEFAULT_BATCH_SIZE

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_RANGES_PER_BATCH",
    "Coordinator",
    "Migration",
    "Mover",
    "Progress",
    "RebalancePlan",
    "RebalanceReport",
    "RebalanceStatus",
    "estimate_keys",
    "plan",
]
