"""Prometheus metrics of the HTTP face, summed over every worker process.

``GET /metrics`` answers in the Prometheus text format. The metrics:

* ``dhtcart_http_requests_total{route, method, status}`` (counter): requests
  answered; ``route`` is the path template (``/items/{customerId}``), or
  ``unmatched`` for a path no route has.
* ``dhtcart_http_request_duration_seconds{route, method}`` (histogram): time
  from a request's arrival to the end of its response.
* ``dhtcart_store_operations_total{shard, operation}`` (counter): cart
  operations the face made (``list``, ``add``, ``update``, ``delete``,
  ``checkout``), by the shard that holds the customer's cart.
* ``dhtcart_store_errors_total{shard, error}`` (counter): those that failed
  on the store's side (``ShardUnavailable``, ``StoreBusy``, ``StoreClosed``,
  ``TooManyRetries``, ``CorruptData``).
* ``dhtcart_workers`` (gauge): worker processes serving.

Several workers: ``dhtcart serve`` points ``PROMETHEUS_MULTIPROC_DIR``
(:data:`dhtcart.settings.PROMETHEUS_DIR_ENV`) at a
fresh temporary directory per run, before any worker starts;
prometheus_client then keeps each worker's values in its own files there and
:meth:`Metrics.render` sums them, so any worker's ``/metrics`` reports the
whole server. Counters of a worker that died stay counted (totals never go
back); its live gauges are dropped (:func:`forget_dead_workers`, which the
supervisor calls when a worker exits and each worker calls when it starts).

Adding a metric: declare it in :meth:`Metrics.__init__` with
:meth:`Metrics.counter`, :meth:`Metrics.gauge` or :meth:`Metrics.histogram`
(one line each, always with ``registry=self.registry`` taken care of), and
count where the event happens. A library object that keeps its own counters
(the store's redirects and retries, a rebalance's keys moved) is exported by
:meth:`Metrics.mirror_counter` / :meth:`Metrics.mirror_gauge`: a function that
reads the current values, turned into metrics at every scrape and every few
seconds in every worker (:meth:`Metrics.sync`).

Overhead: a request costs three value updates (one counter, a histogram's
bucket and sum) and a store operation one more, on label children looked up
once and kept (no ``labels()`` call per request).
"""

from __future__ import annotations

import glob
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'dhtcart.metrics needs the server extra ({exc.name} is missing): pip install "dhtcart[server]"'
    ) from exc

from dhtcart.settings import PROMETHEUS_DIR_ENV

__all__ = ["Metrics", "forget_dead_workers", "multiprocess_dir"]

#: latency buckets, seconds: a fast local add takes a fraction of a millisecond
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_PID_FILE = re.compile(r"_(\d+)\.db$")

#: reads a library object's values: {label values: value}
Reader = Callable[[], Mapping[tuple[str, ...], float]]
#: how the workers' values of a gauge combine (prometheus_client's multiprocess modes)
GaugeMode = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent"]


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, or ``None`` when each process counts alone."""
    return os.environ.get(PROMETHEUS_DIR_ENV) or None


def forget_dead_workers(path: str | None = None, alive: Callable[[int], bool] | None = None) -> list[int]:
    """Drop the live-gauge files of processes that no longer run; return their pids.

    prometheus_client documents :func:`~prometheus_client.multiprocess.mark_process_dead`
    for a supervisor to call when a worker exits: ``dhtcart serve``'s supervisor
    calls this when it replaces workers, and each worker when it starts, which
    also finds workers killed without anyone noticing (their pid is gone).
    """
    directory = path or multiprocess_dir()
    if directory is None:
        return []
    is_alive = alive or _pid_alive
    dead = set()
    for name in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        m = _PID_FILE.search(name)
        if m and not is_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Metrics:
    """The metrics of one app (its own registry, so several apps in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        self.requests = self.counter("dhtcart_http_requests", "HTTP requests answered.", ("route", "method", "status"))
        self.latency = self.histogram(
            "dhtcart_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
        )
        self.store_operations = self.counter(
            "dhtcart_store_operations",
            "Cart operations made on the store, by the shard of the cart.",
            ("shard", "operation"),
        )
        self.store_errors = self.counter(
            "dhtcart_store_errors",
            "Cart operations that failed on the store's side (unreachable shard, busy or closed store, contention).",
            ("shard", "error"),
        )
        self.workers = self.gauge("dhtcart_workers", "Worker processes serving.", mode="livesum")
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._store_children: dict[tuple[str, str], Any] = {}
        self._mirrors: list[Callable[[], None]] = []
        self._watched: list[Any] = []  # the store watch_store() exports (one; replaced on restart)
        self._sync_lock = threading.Lock()

    # -- declaring ------------------------------------------------------------------------

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter in this app's registry (``name`` without ``_total``)."""
        return Counter(name, documentation, tuple(labels), registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = (), mode: GaugeMode = "livesum") -> Gauge:
        """A gauge; ``mode`` says how workers' values combine (``livesum``, ``max``, ``liveall``, ...)."""
        return Gauge(name, documentation, tuple(labels), registry=self.registry, multiprocess_mode=mode)

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """A histogram with these bucket bounds."""
        return Histogram(name, documentation, tuple(labels), registry=self.registry, buckets=tuple(buckets))

    def mirror_counter(self, name: str, documentation: str, labels: Sequence[str], read: Reader) -> Counter:
        """Export counts an object keeps itself: ``read()`` gives its running totals by label values.

        At each :meth:`sync` the growth since the last one is added, so the
        counter sums over workers like any other (a total that went down, a
        restarted object, starts again from its new value).
        """
        counter = self.counter(name, documentation, labels)
        last: dict[tuple[str, ...], float] = {}

        def sync() -> None:
            for key, value in read().items():
                grown = value - last.get(key, 0.0)
                if grown < 0:  # the object was replaced: count its new total
                    grown = value
                if grown:
                    (counter.labels(*key) if key else counter).inc(grown)
                last[key] = value

        self._mirrors.append(sync)
        return counter

    def mirror_gauge(
        self, name: str, documentation: str, labels: Sequence[str], read: Reader, mode: GaugeMode = "max"
    ) -> Gauge:
        """Export values an object keeps itself (progress, sizes): set at each :meth:`sync`."""
        gauge = self.gauge(name, documentation, labels, mode=mode)

        def sync() -> None:
            for key, value in read().items():
                (gauge.labels(*key) if key else gauge).set(value)

        self._mirrors.append(sync)
        return gauge

    def watch_store(self, store: Any) -> None:
        """Export a :class:`~dhtcart.store.DHTServerStore`'s routing counts and its membership.

        ``dhtcart_store_routing_total{event}``: ``redirect`` (a shard refused a key
        it does not own and the store followed), ``reload`` (the membership read
        again), ``wait`` (a pause on a batch being handed over), ``takeover`` (a
        dead rebalancer's batch finished by this worker). Gauges:
        ``dhtcart_membership_epoch``, ``dhtcart_rebalance_in_progress`` (0 or 1),
        ``dhtcart_rebalance_fraction_done`` (of the moving key space),
        ``dhtcart_rebalance_keys_moved`` and ``dhtcart_rebalance_keys_planned``;
        replication: ``dhtcart_replicas``, ``dhtcart_shards_down`` and
        ``dhtcart_under_replicated_fraction`` (a repair's progress).
        """
        if self._watched:  # the app started again: follow its new store
            self._watched[0] = store
            return
        self._watched.append(store)
        watched = self._watched
        self.mirror_counter(
            "dhtcart_store_routing",
            "Redirects followed, membership reloads, waits on a hand-over and takeovers, by the store.",
            ("event",),
            lambda: {(event.rstrip("s"),): float(n) for event, n in watched[0].routing_stats().items()},
        )
        status: dict[str, Any] = {}

        def read(field: str) -> Callable[[], Mapping[tuple[str, ...], float]]:
            def value() -> Mapping[tuple[str, ...], float]:
                if field == "epoch":  # the first gauge read at each sync reads the status for all
                    try:
                        status["now"] = watched[0].rebalance_status()
                    except Exception:  # a shard or the membership unreachable: set nothing, so the
                        status["now"] = None  # last values stay, with their time (not made fresh)
                now = status.get("now")
                if now is None:
                    return {}
                return {(): float(getattr(now, field))}

            return value

        # One reading of one status, by whichever worker read it last: "mostrecent" across
        # workers. ("max" let a worker that had not synced since the last migration ended keep
        # showing its totals, and fraction_done 1.0, for the first seconds of the next one.)
        for field, name, doc in (
            ("epoch", "dhtcart_membership_epoch", "The membership epoch this worker routes with."),
            ("migrating", "dhtcart_rebalance_in_progress", "1 while a migration is in progress, else 0."),
            ("fraction_done", "dhtcart_rebalance_fraction_done", "Share of the moving key space handed over."),
            ("keys_moved", "dhtcart_rebalance_keys_moved", "Keys the migration has moved, as last reported."),
            ("keys_planned", "dhtcart_rebalance_keys_planned", "Keys the migration expects to move."),
            ("replicas", "dhtcart_replicas", "Copies of every key the store keeps."),
            ("shards_down", "dhtcart_shards_down", "Shards a failover took out, not yet removed by the repair."),
            (
                "under_replicated",
                "dhtcart_under_replicated_fraction",
                "Share of the key space with fewer live copies than replicas (falls to 0 as the repair goes).",
            ),
        ):
            self.mirror_gauge(name, doc, (), read(field), mode="mostrecent")

    @property
    def has_mirrors(self) -> bool:
        """Whether :meth:`sync` has anything to do."""
        return bool(self._mirrors)

    def sync(self) -> None:
        """Bring every mirrored metric up to date (each worker does it every few seconds)."""
        with self._sync_lock:
            for sync in self._mirrors:
                sync()

    # -- counting ---------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request."""
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, method, str(status))
        child.inc()
        timing = self._latency_children.get(key[:2])
        if timing is None:
            timing = self._latency_children[key[:2]] = self.latency.labels(route, method)
        timing.observe(seconds)

    def store_operation(self, shard: str, operation: str) -> None:
        """One cart operation on the shard of the customer's cart."""
        key = (shard, operation)
        child = self._store_children.get(key)
        if child is None:
            child = self._store_children[key] = self.store_operations.labels(shard, operation)
        child.inc()

    def store_error(self, shard: str, error: str) -> None:
        """One operation that failed on the store's side (rare: no child cache)."""
        self.store_errors.labels(shard, error).inc()

    def worker_started(self) -> None:
        """This process serves (the ``dhtcart_workers`` gauge; dropped when it dies)."""
        forget_dead_workers()
        self.workers.set(1)

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type: every worker's values in multiprocess mode."""
        if self._mirrors:
            self.sync()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
