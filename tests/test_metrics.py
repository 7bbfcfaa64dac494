"""dhtcart.metrics alone: counting, mirrors of library counters, multiprocess files, dead workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from dhtcart.metrics import Metrics, forget_dead_workers
from dhtcart.settings import PROMETHEUS_DIR_ENV
from tests.helpers import child_env


def test_requests_and_store_operations_are_counted() -> None:
    m = Metrics()
    for _ in range(3):
        m.request("/items/{customerId}", "GET", 200, 0.0007)
    m.request("unmatched", "GET", 404, 0.0001)
    m.store_operation("shard-1", "add")
    m.store_error("shard-1", "ShardUnavailable")
    text = m.render()[0].decode()
    assert 'dhtcart_http_requests_total{method="GET",route="/items/{customerId}",status="200"} 3.0' in text
    assert (
        'dhtcart_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/items/{customerId}"} 3.0' in text
    )
    assert 'dhtcart_store_operations_total{operation="add",shard="shard-1"} 1.0' in text
    assert 'dhtcart_store_errors_total{error="ShardUnavailable",shard="shard-1"} 1.0' in text


def test_two_apps_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.request("/x", "GET", 200, 0.1)
    assert 'route="/x"' not in b.render()[0].decode()


def test_mirrors_turn_library_counters_into_metrics() -> None:
    """How a store's own counters (redirects, retries, keys moved) become metrics: one declaration each."""
    counts = {("shard-0",): 2.0}
    progress = {(): 10.0}
    m = Metrics()
    m.mirror_counter("dhtcart_store_retries", "Retries.", ("shard",), lambda: counts)
    m.mirror_gauge("dhtcart_rebalance_keys_planned", "Planned.", (), lambda: progress)
    assert m.has_mirrors
    text = m.render()[0].decode()
    assert 'dhtcart_store_retries_total{shard="shard-0"} 2.0' in text and "dhtcart_rebalance_keys_planned 10.0" in text
    counts[("shard-0",)] = 5.0
    counts[("shard-1",)] = 1.0
    text = m.render()[0].decode()
    assert 'dhtcart_store_retries_total{shard="shard-0"} 5.0' in text
    assert 'dhtcart_store_retries_total{shard="shard-1"} 1.0' in text
    counts[("shard-0",)] = 1.0  # a new store object started again from zero: its total counts on top
    assert 'dhtcart_store_retries_total{shard="shard-0"} 6.0' in m.render()[0].decode()


_WORKER = """
import sys
from dhtcart.metrics import Metrics
m = Metrics()
m.worker_started()
for _ in range(int(sys.argv[1])):
    m.request("/healthz", "GET", 200, 0.001)
"""


def test_multiprocess_mode_sums_processes_and_forgets_dead_ones(tmp_path: Path) -> None:
    env = child_env(**{PROMETHEUS_DIR_ENV: str(tmp_path)})
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(n)], env=env, check=True, timeout=60)
    assert any(name.startswith("gauge_livesum_") for name in os.listdir(tmp_path))
    render = (
        "from dhtcart.metrics import Metrics, forget_dead_workers\n"
        "print(forget_dead_workers())\n"
        "print(Metrics().render()[0].decode())"
    )
    out = subprocess.run([sys.executable, "-c", render], env=env, capture_output=True, text=True, check=True).stdout
    assert 'dhtcart_http_requests_total{method="GET",route="/healthz",status="200"} 7.0' in out  # both, summed
    assert "dhtcart_workers 0.0" in out  # both exited: their live gauges are gone
    assert len(forget_dead_workers(str(tmp_path))) == 1  # the rendering process's own, now it exited too
    assert not any(name.startswith("gauge_livesum_") for name in os.listdir(tmp_path))
    assert forget_dead_workers(str(tmp_path)) == []


def test_a_watched_store_reports_its_redirects_and_a_rebalance(tmp_path: Path) -> None:
    from dhtcart import DHTServerStore, hash_key

    keys = [hash_key(f"k{i}") for i in range(500)]
    with DHTServerStore.open(tmp_path / "s", shards=3) as watched:
        for key in keys:
            watched.put(key, b"v")
        m = Metrics()
        m.watch_store(watched)
        text = m.render()[0].decode()
        assert "dhtcart_membership_epoch 1.0" in text and "dhtcart_rebalance_in_progress 0.0" in text

        def stop(done: int, total: int) -> None:
            raise RuntimeError("stopped half way")

        with DHTServerStore.open(tmp_path / "s") as other, pytest.raises(RuntimeError):
            other.add_shard("new", batch_size=20, progress=stop)  # another handle rebalances, and stops
        for key in keys:  # the watched handle meets the moved keys: redirects, a membership reload
            assert watched.get(key) is not None
        text = m.render()[0].decode()
        assert "dhtcart_membership_epoch 2.0" in text and "dhtcart_rebalance_in_progress 1.0" in text
        assert 'dhtcart_store_routing_total{event="redirect"}' in text
        assert 'dhtcart_store_routing_total{event="reload"}' in text
        moved, planned, fraction = (
            float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
            for name in (
                "dhtcart_rebalance_keys_moved",
                "dhtcart_rebalance_keys_planned",
                "dhtcart_rebalance_fraction_done",
            )
        )
        assert 0 < moved <= planned and 0 < fraction < 1
        watched.finish_rebalance()
        text = m.render()[0].decode()
        assert "dhtcart_membership_epoch 3.0" in text and "dhtcart_rebalance_in_progress 0.0" in text
        finished = _gauge(text, "dhtcart_rebalance_keys_moved")
        assert finished > 20
        with DHTServerStore.open(tmp_path / "s") as other, pytest.raises(RuntimeError):
            other.add_shard("newer", batch_size=20, progress=stop)  # the next run, stopped after a batch
        text = m.render()[0].decode()
        assert "dhtcart_membership_epoch 4.0" in text and "dhtcart_rebalance_in_progress 1.0" in text
        assert 0 < _gauge(text, "dhtcart_rebalance_keys_moved") <= 20 < finished  # its own progress
        assert _gauge(text, "dhtcart_rebalance_fraction_done") < 1


_STATUS_WORKER = """
import sys
from dhtcart.metrics import Metrics
from dhtcart.store import RebalanceStatus

epoch, migrating, fraction, moved, planned = (float(a) for a in sys.argv[1:6])

class Store:
    def routing_stats(self):
        return {}

    def rebalance_status(self):
        return RebalanceStatus(
            int(epoch), bool(migrating), 4, 0, fraction, None, [], [], [], int(moved), int(planned)
        )

m = Metrics()
m.watch_store(Store())
print(m.render()[0].decode())
"""


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, (name, text)
    return float(found.group(1))


def test_a_new_migration_starts_at_zero_of_its_own_plan_in_every_worker(tmp_path: Path) -> None:
    """Two workers: one last read the status as the previous migration ended (5000 of 5000 keys, all
    done); the other reads it as a new migration starts (0 of 800). Whichever is scraped, the gauges
    are the newest reading, not the largest: the new run starts at 0 of its own plan."""
    env = child_env(**{PROMETHEUS_DIR_ENV: str(tmp_path)})

    def worker(*status: float) -> str:
        args = [str(x) for x in status]
        done = subprocess.run([sys.executable, "-c", _STATUS_WORKER, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker(3, 0, 1.0, 5000, 5000)  # the previous run, finished
    text = worker(4, 1, 0.0, 0, 800)  # the next one, starting: rendered with both workers' files
    assert _gauge(text, "dhtcart_rebalance_in_progress") == 1.0
    assert _gauge(text, "dhtcart_rebalance_keys_moved") == 0.0
    assert _gauge(text, "dhtcart_rebalance_keys_planned") == 800.0
    assert _gauge(text, "dhtcart_rebalance_fraction_done") == 0.0
    assert _gauge(text, "dhtcart_membership_epoch") == 4.0
