import psycopg
import pytest

from pipeline.config import Settings
from pipeline.locks import exclusive_lock
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.test_sync import seed_hand_built


def test_demo_runs_end_to_end(settings: Settings) -> None:
    result = run_cli("demo", "--yes")
    assert result.exit_code == 0, result.stderr
    client = clickhouse.connect(settings)
    # 5 advertisers × 3 campaigns × 1,000 impressions, then 2 × 2 × 500; clicks at 8% and 10% per campaign.
    assert client.query("SELECT count() FROM impressions").result_rows == [(17_000,)]
    assert client.query("SELECT sum(clicks) FROM campaign_daily").result_rows == [(15 * 80 + 4 * 50,)]
    assert "incremental sync" in result.stdout
    assert "=== 📊 ClickHouse Campaign CTR ===" in result.stdout
    assert "All checks pass." in result.stdout
    # Each step's title comes before what it printed: the full sync's table after "3.", the CTR report after "6.".
    out = result.stdout
    titles = [out.index(f"{n}. ") for n in range(1, 8)]
    assert titles == sorted(titles)
    assert titles[2] < out.index("full sync") < titles[3] < titles[4] < out.index("incremental sync") < titles[5]
    assert titles[5] < out.index("ClickHouse Campaign CTR") < titles[6] < out.index("All checks pass.")
    assert f"{15 * 1000:,} impressions, {15 * 80:,} clicks" in out[titles[1] : titles[2]]


def test_demo_refuses_to_empty_an_external_postgres_without_yes(settings: Settings) -> None:
    result = run_cli("demo")
    assert result.exit_code == 1
    assert "the demo empties the source tables, and Postgres is external" in result.stderr


def test_demo_leaves_the_source_alone_when_a_later_step_could_not_run(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync running in the home, or a warehouse that does not answer: the demo used to empty and refill the
    source (and create a replication slot) first, then fail."""
    seed_hand_built(pg)
    with exclusive_lock(settings.home / "sync.lock", "sync"):
        busy = run_cli("demo", "--yes")
    assert (busy.exit_code, busy.stderr.startswith("error: sync is busy: another adpipe process")) == (1, True)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", "http://default:s3cret@127.0.0.1:1/adpipe")
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_RETRIES", "0")
    unreachable = run_cli("demo", "--yes")
    assert unreachable.exit_code == 1
    assert unreachable.stderr.startswith("error: cannot reach ClickHouse at http://default:***@127.0.0.1:1/adpipe")
    assert pg.execute("SELECT count(*) FROM impressions").fetchone()[0] == 4
    slots = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
    assert pg.execute(slots).fetchone()[0] == 0
