"""The demo: the main job end to end on the configured (by default embedded) systems, as a sequence of steps.

`demo_steps` yields each step's title with what it produced, so the CLI (or a notebook) decides how to show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.analytics.chstats import chstats
from pipeline.analytics.reconcile import ReconcileReport, reconcile
from pipeline.config import Settings, mask_url
from pipeline.errors import ConfigError
from pipeline.options import Mode
from pipeline.source.generate import BatchResult, Generator, reset
from pipeline.source.postgres import connect
from pipeline.sync.run import SyncOptions, sync
from pipeline.sync.runlog import SyncResult

DemoOutput = BatchResult | SyncResult | str | ReconcileReport | None


@dataclass(frozen=True)
class DemoStep:
    title: str
    output: DemoOutput


def demo_steps(settings: Settings, seed: int = 42, *, allow_external: bool = False) -> Iterator[DemoStep]:
    """Reset, generate, full sync, generate more, incremental sync, the KPI report, then reconcile.

    An external Postgres (ADPIPE_POSTGRES_URL) is emptied only with `allow_external`; otherwise nothing is touched.
    """
    if settings.postgres_url and not allow_external:
        raise ConfigError(
            f"the demo empties the source tables, and Postgres is external ({mask_url(settings.postgres_url)}); "
            "pass --yes if that is what you want"
        )
    with connect(settings) as conn:
        reset(conn)
        yield DemoStep("1. Empty the source tables", None)
        first = Generator(conn, seed=seed).batch(advertisers=5, campaigns=3, impressions=1000, ctr=0.08)
        yield DemoStep("2. Generate 5 advertisers × 3 campaigns × 1,000 impressions, CTR 8%", first)
    full = sync(settings, SyncOptions(mode=Mode.FULL))
    yield DemoStep("3. Full sync: Postgres → Parquet snapshot → ClickHouse", full)
    with connect(settings) as conn:
        second = Generator(conn, seed=seed + 1).batch(advertisers=2, campaigns=2, impressions=500, ctr=0.10)
    yield DemoStep("4. Generate another batch: 2 advertisers × 2 campaigns × 500 impressions, CTR 10%", second)
    incremental = sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    yield DemoStep("5. Incremental sync: only the new rows", incremental)
    yield DemoStep("6. The KPI report (`adpipe chstats`; every KPI: `adpipe kpi list`)", chstats(settings))
    yield DemoStep(
        "7. Reconcile: every KPI again with DuckDB over the snapshots, row counts against Postgres", reconcile(settings)
    )
