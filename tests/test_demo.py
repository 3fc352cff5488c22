from pipeline.config import Settings
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli


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


def test_demo_refuses_to_empty_an_external_postgres_without_yes(settings: Settings) -> None:
    result = run_cli("demo")
    assert result.exit_code == 1
    assert "the demo empties the source tables, and Postgres is external" in result.stderr
