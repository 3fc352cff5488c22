"""The demo: the main job end to end on the configured (by default embedded) systems, as a sequence of steps.

`demo_steps` returns each step's title with the call that runs it, so the CLI (or a notebook) can show the title
before the work starts and then show what the step produced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.analytics.chstats import chstats
from pipeline.analytics.reconcile import ReconcileReport, reconcile
from pipeline.config import Settings, mask_url
from pipeline.errors import ConfigError
from pipeline.options import Mode
from pipeline.source.generate import BatchResult, Generator, reset
from pipeline.source.postgres import connect
from pipeline.sync.run import SyncOptions, sync, sync_lock
from pipeline.sync.runlog import SyncResult
from pipeline.warehouse import client as clickhouse

DemoOutput = BatchResult | SyncResult | str | ReconcileReport | None


@dataclass(frozen=True)
class DemoStep:
    title: str
    run: Callable[[], DemoOutput]


def demo_steps(settings: Settings, seed: int = 42, *, allow_external: bool = False) -> list[DemoStep]:
    """Reset, generate, full sync, generate more, incremental sync, the KPI report, then reconcile: run them in order.

    An external Postgres (ADPIPE_POSTGRES_URL) is emptied only with `allow_external`; otherwise this raises before
    any step runs.
    """
    if settings.postgres_url and not allow_external:
        raise ConfigError(
            f"the demo empties the source tables, and Postgres is external ({mask_url(settings.postgres_url)}); "
            "pass --yes if that is what you want"
        )

    def empty() -> None:
        # What the later steps need is checked before the source is emptied: no sync running in this home (it would
        # then fail on its own), and a warehouse that answers (the embedded engine is then this process's).
        with sync_lock(settings):
            pass
        clickhouse.connect(settings)
        with connect(settings) as conn:
            reset(conn)

    def generate(step_seed: int, advertisers: int, campaigns: int, impressions: int, ctr: float) -> BatchResult:
        with connect(settings) as conn:
            return Generator(conn, seed=step_seed).batch(advertisers, campaigns, impressions, ctr)

    return [
        DemoStep("1. Empty the source tables", empty),
        DemoStep(
            "2. Generate 5 advertisers × 3 campaigns × 1,000 impressions, CTR 8%",
            lambda: generate(seed, 5, 3, 1000, 0.08),
        ),
        DemoStep(
            "3. Full sync: Postgres → Parquet snapshot → ClickHouse",
            lambda: sync(settings, SyncOptions(mode=Mode.FULL)),
        ),
        DemoStep(
            "4. Generate another batch: 2 advertisers × 2 campaigns × 500 impressions, CTR 10%",
            lambda: generate(seed + 1, 2, 2, 500, 0.10),
        ),
        DemoStep("5. Incremental sync: only the new rows", lambda: sync(settings, SyncOptions(mode=Mode.INCREMENTAL))),
        DemoStep("6. The KPI report (`adpipe chstats`; every KPI: `adpipe kpi list`)", lambda: chstats(settings)),
        DemoStep(
            "7. Reconcile: every KPI again with DuckDB over the snapshots, row counts against Postgres",
            lambda: reconcile(settings),
        ),
    ]
