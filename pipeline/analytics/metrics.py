"""The follower's Prometheus metrics: the figures of `status --json`, plus the follower's own run counters.

The figures are gathered by `warehouse_status` after each run, in the follower's thread, and served as they were
then: a scrape never opens the warehouse (in embedded mode the follower may have handed it to another process).
Lag in seconds is the one figure computed at scrape time, from the snapshot time of the last committed run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.analytics.status import WarehouseStatus
from pipeline.errors import AdpipeError


@dataclass(eq=False)  # registered by identity: a collector must be hashable
class FollowerMetrics(Collector):
    """What the follower last knew, shared between its loop (`update`) and the exporter's thread (`collect`)."""

    status: WarehouseStatus | None = None
    runs: dict[str, int] = field(default_factory=lambda: {"success": 0, "failed": 0})
    consecutive_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, *, succeeded: bool, status: WarehouseStatus | None) -> None:
        """Count a run; `status`, when gathered, replaces the figures (a failed gathering keeps the old ones)."""
        with self._lock:
            self.runs["success" if succeeded else "failed"] += 1
            self.consecutive_failures = 0 if succeeded else self.consecutive_failures + 1
            if status is not None:
                self.status = status

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            status, runs, failures = self.status, dict(self.runs), self.consecutive_failures
        follow_runs = CounterMetricFamily("adpipe_follow_runs", "Runs of this follower, by result.", labels=["result"])
        for result, count in runs.items():
            follow_runs.add_metric([result], count)
        yield follow_runs
        yield GaugeMetricFamily(
            "adpipe_follow_consecutive_failures", "Failed runs in a row (0 after a success).", value=failures
        )
        if status is not None:
            yield from status_metrics(status)


def status_metrics(status: WarehouseStatus) -> Iterator[Metric]:
    """The figures of `status --json` as Prometheus metric families."""
    per_table = {
        "adpipe_warehouse_rows": ("Rows in the warehouse.", lambda t: t.clickhouse_rows),
        "adpipe_source_rows": ("Rows in the source.", lambda t: t.postgres_rows),
        "adpipe_lag_rows": ("Source rows neither in the warehouse nor quarantined.", lambda t: t.behind),
        "adpipe_quarantined_rows": ("Rows set aside in quarantine.", lambda t: t.quarantined),
    }
    for name, (documentation, value) in per_table.items():
        family = GaugeMetricFamily(name, documentation, labels=["table"])
        for table in status.tables:
            family.add_metric([table.table], value(table))
        yield family
    synced = CounterMetricFamily("adpipe_rows_synced", "Rows loaded by successful runs.", labels=["table"])
    for table in status.tables:
        synced.add_metric([table.table], table.rows_synced)
    yield synced
    if status.last_success_at is not None:
        yield GaugeMetricFamily(
            "adpipe_last_success_timestamp_seconds",
            "When the last successful run finished (Unix time).",
            value=status.last_success_at.timestamp(),
        )
    if status.lag_seconds is not None:
        yield GaugeMetricFamily(
            "adpipe_lag_seconds", "Seconds since the source snapshot the warehouse holds.", value=status.lag_seconds
        )
    if status.capture.retained_bytes is not None:
        yield GaugeMetricFamily(
            "adpipe_slot_wal_retained_bytes",
            "WAL the replication slot keeps the source from recycling.",
            value=status.capture.retained_bytes,
        )
    durations = status.run_durations
    bounds = [f"{bound:g}" for bound in durations.buckets] + ["+Inf"]
    buckets = list(zip(bounds, durations.counts, strict=True))
    yield HistogramMetricFamily(
        "adpipe_run_duration_seconds", "Wall time of successful runs.", buckets=buckets, sum_value=durations.sum
    )


def serve_metrics(metrics: FollowerMetrics, port: int, address: str) -> int:
    """Serve `metrics` at http://address:port/metrics from a daemon thread; a port in use fails in one line. Returns
    the port served (the one the system chose, for port 0)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    try:
        server, _ = start_http_server(port, addr=address, registry=registry)
        return server.server_port
    except OSError as exc:
        raise AdpipeError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None
