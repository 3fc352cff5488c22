"""Commands on the source Postgres: the seed's generator, `stats`, `reset`, and `down`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli.app import app, console, current_settings

if TYPE_CHECKING:
    from pipeline.source.generate import Generator

Seed = Annotated[int | None, typer.Option(min=0, help="Random seed: the same seed writes the same data.")]
Now = Annotated[
    datetime | None,
    typer.Option(
        help="Generate as of this UTC time (e.g. 2026-11-20T12:00:00) instead of the clock; "
        "with --seed, the rows are identical."
    ),
]


def _generator(seed: int | None, now: datetime | None) -> Generator:
    # Imports inside commands keep `adpipe --help` fast.
    from pipeline.source.generate import Generator
    from pipeline.source.postgres import connect

    return Generator(connect(current_settings()), seed=seed, now=now)


@app.command()
def batch(
    advertisers: Annotated[int, typer.Option(help="Advertisers to create.")] = 5,
    campaigns: Annotated[int, typer.Option(help="Campaigns per advertiser.")] = 3,
    impressions: Annotated[int, typer.Option(help="Impressions per campaign.")] = 1000,
    ctr: Annotated[float, typer.Option(help="Share of impressions that get a click (0-1).")] = 0.08,
    seed: Seed = None,
    now: Now = None,
) -> None:
    """Create advertisers with campaigns, impressions and clicks, in one transaction."""
    result = _generator(seed, now).batch(advertisers, campaigns, impressions, ctr)
    console.print(
        f"Created {result.advertisers:,} advertisers, {result.campaigns:,} campaigns, "
        f"{result.impressions:,} impressions, {result.clicks:,} clicks."
    )


@app.command("advertisers")
def add_advertisers(
    count: Annotated[int, typer.Option(help="Advertisers to create.")] = 1,
    seed: Seed = None,
    now: Now = None,
) -> None:
    """Create advertisers."""
    ids = _generator(seed, now).advertisers(count)
    console.print(f"Created {len(ids):,} advertisers{_id_range(ids)}.")


@app.command("campaigns")
def add_campaigns(
    advertiser_id: Annotated[int, typer.Option(help="The advertiser that owns the campaigns.")],
    count: Annotated[int, typer.Option(help="Campaigns to create.")] = 1,
    seed: Seed = None,
    now: Now = None,
) -> None:
    """Create campaigns for an advertiser."""
    ids = _generator(seed, now).campaigns(advertiser_id, count)
    console.print(f"Created {len(ids):,} campaigns for advertiser {advertiser_id}{_id_range(ids)}.")


@app.command("impressions")
def add_impressions(
    campaign_id: Annotated[int, typer.Option(help="The campaign served.")],
    count: Annotated[int, typer.Option(help="Impressions to create.")] = 1000,
    seed: Seed = None,
    now: Now = None,
) -> None:
    """Create impressions for a campaign, spread over the last 7 days."""
    created = _generator(seed, now).impressions(campaign_id, count)
    console.print(f"Created {created:,} impressions for campaign {campaign_id}.")


@app.command("clicks")
def add_clicks(
    campaign_id: Annotated[int, typer.Option(help="The campaign clicked.")],
    ratio: Annotated[float, typer.Option(help="Share of the campaign's impressions that get a click (0-1).")] = 0.08,
    seed: Seed = None,
) -> None:
    """Create clicks on a campaign's existing impressions, each 1-120 s after its impression."""
    # No --now: click times follow the impressions' times, not the clock.
    created = _generator(seed, None).clicks(campaign_id, ratio)
    console.print(f"Created {created:,} clicks for campaign {campaign_id}.")


def _id_range(ids: list[int]) -> str:
    return f" (ids {ids[0]}-{ids[-1]})" if ids else ""


@app.command()
def stats() -> None:
    """Rows, id range and created_at range of each source table, and its rows quarantined by the last sync."""
    from pipeline.analytics.status import source_stats

    rows = source_stats(current_settings())
    table = Table(title="Postgres source tables")
    numeric = ("Rows", "Min id", "Max id", "Quarantined")
    for column in ("Table", "Rows", "Min id", "Max id", "First created_at", "Last created_at", "Quarantined"):
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=True)
    for s in rows:
        table.add_row(
            s.table,
            f"{s.rows:,}",
            _text(s.min_id),
            _text(s.max_id),
            _text(s.min_created_at),
            _text(s.max_created_at),
            f"{s.quarantined:,}",
        )
    console.print(table)
    console.print("Quarantined: rows the last committed sync set aside (see `adpipe status`).")


def _text(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


@app.command()
def reset(yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False) -> None:
    """Empty all four source tables and restart their ids."""
    from pipeline.source.generate import reset as reset_tables
    from pipeline.source.postgres import connect

    settings = current_settings()
    with connect(settings) as conn:
        if not yes:
            typer.confirm("Delete every row of advertiser, campaign, impressions and clicks?", abort=True)
        reset_tables(conn)
    console.print("Emptied advertiser, campaign, impressions and clicks.")


@app.command()
def down() -> None:
    """Stop the embedded Postgres server (it is left running between commands)."""
    from pipeline.source.postgres import EmbeddedPostgres

    settings = current_settings()
    if settings.postgres_url:
        console.print("Postgres is an external server (ADPIPE_POSTGRES_URL); nothing to stop.")
    elif EmbeddedPostgres(settings.embedded_postgres_dir).stop():
        console.print(f"Stopped the embedded Postgres in {settings.embedded_postgres_dir}.")
    else:
        console.print("The embedded Postgres is not running.")
