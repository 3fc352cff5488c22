from tests.conftest import run_cli


def test_batch_then_stats(settings) -> None:
    result = run_cli("batch", "--advertisers", "2", "--campaigns", "2", "--impressions", "10", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert "Created 2 advertisers, 4 campaigns, 40 impressions" in result.stdout
