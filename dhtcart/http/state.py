"""What the handlers share, kept in ``app.state.dhtcart``."""

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from dhtcart.cart import CartService
from dhtcart.http.profiles import Profile
from dhtcart.metrics import Metrics
from dhtcart.settings import Settings

__all__ = [
    "FAST_LOCAL_REFRESH",
    "AppState",
    "State",
    "app_state",
    "runs_inline",
]


FAST_LOCAL_REFRESH = 1.0  #: seconds between two looks at whether the shards are fast and local


@dataclass
class AppState:
    """What the handlers share, kept in ``app.state.dhtcart``.

    ``service`` is ``None`` before the lifespan starts and after it ends (the
    handlers answer 503 then). ``inline`` forces where service calls run
    (``None``: decided per request by :func:`runs_inline`).
    """

    settings: Settings
    profile: Profile
    service: CartService | None = None
    data_dir: str | None = None
    inline: bool | None = None
    metrics: Metrics | None = None
    openapi: bytes | None = field(default=None, repr=False)
    _fast_local: bool = field(default=False, repr=False)
    _fast_local_until: float = field(default=0.0, repr=False)

    def runs_inline(self, service: CartService) -> bool:
        """Where service calls run now: forced by ``inline``, else :func:`runs_inline`, asked once a second."""
        if self.inline is not None:
            return self.inline
        now = time.monotonic()
        if now >= self._fast_local_until:  # the shards may change while the server runs
            self._fast_local = runs_inline(service)
            self._fast_local_until = now + FAST_LOCAL_REFRESH
        return self._fast_local


def app_state(request: Request) -> AppState:
    state: AppState = request.scope["app"].state.dhtcart
    return state


#: a handler's first parameter: the app's state (bound by the route, documented as nothing)
State = Annotated[AppState, Depends(app_state)]


def runs_inline(service: CartService) -> bool:
    """Whether every shard answers from this machine's memory or disk cache, without a flush.

    Such calls take tens of microseconds: less than handing them to a thread
    and back, so the app makes them on the event loop. Anything else (Redis,
    LMDB in ``"power"`` durability, third-party backends unless they declare
    :attr:`~dhtcart.backends.base.Backend.fast_local`) goes to the thread pool.
    """
    return service.fast_local
