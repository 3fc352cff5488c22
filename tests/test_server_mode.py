"""Server mode's own concerns, through ClickHouse's HTTP interface (tests/clickhouse_http.py) over the real engine:
retries and what is never retried, credentials, an unreachable or slow server, an unknown database, TLS.

Expected counts are those of the hand-built dataset (tests/test_sync.py: campaign 1 has 3 impressions and
2 clicks, campaign 2 has 1 impression), and the number of requests each fault must cost is written out.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import clickhouse_connect
import psycopg
import pytest

from pipeline.config import Settings, load_settings
from pipeline.errors import AdpipeError, WarehouseError, describe_failure, is_transient
from pipeline.referral.load import load_files
from pipeline.warehouse import client as clickhouse
from tests.clickhouse_http import ClickHouseHttp, Fault
from tests.conftest import run_cli
from tests.harness import refused_port
from tests.test_events_load import EXPECTED, LINES, reports, write
from tests.test_sync import aggregate_ch, ch, full, incremental, per_campaign_ch, seed_hand_built

PARQUET_PART = r"`{table}` FORMAT Parquet"


@pytest.fixture
def warehouse(clickhouse_http: ClickHouseHttp) -> str:
    """Every test here runs against the HTTP double (it injects faults, and counts requests)."""
    return clickhouse_http.url()


@pytest.fixture
def double(clickhouse_http: ClickHouseHttp) -> Iterator[ClickHouseHttp]:
    """The session's HTTP double, its request log emptied, with no fault left armed for the next test."""
    clickhouse_http.requests.clear()
    yield clickhouse_http
    assert clickhouse_http.pending_faults() == 0, "a fault was armed but no request met it"


def test_sync_retries_transient_failures_and_loads_each_row_once(
    settings: Settings, pg: psycopg.Connection, double: ClickHouseHttp, caplog: pytest.LogCaptureFixture
) -> None:
    seed_hand_built(pg)
    double.inject(Fault.TOO_MANY_PARTS, times=2, matching=PARQUET_PART.format(table="clicks"))
    # The impressions part is inserted, then the connection breaks before the answer: the resent part must be
    # dropped by its insert_deduplication_token, in the table and in the aggregates.
    double.inject(Fault.RESET, matching=PARQUET_PART.format(table="impressions"))
    double.inject(Fault.UNAVAILABLE, matching="^EXCHANGE TABLES")
    with caplog.at_level(logging.WARNING, logger="pipeline.warehouse.client"):
        full(settings)

    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    assert per_campaign_ch(settings, "clicks") == {1: 2}
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 1}
    assert aggregate_ch(settings, "clicks") == {1: 2, 2: 0}
    assert len(double.statements(PARQUET_PART.format(table="clicks"))) == 3  # two refusals, then the insert
    assert len(double.statements(PARQUET_PART.format(table="impressions"))) == 2  # the insert, resent once
    retries = [record.getMessage() for record in caplog.records if record.name == "pipeline.warehouse.client"]
    assert len(retries) >= 3  # the two refusals and the 503 (the driver resends a reset insert itself)
    assert all(f"http://adpipe:***@127.0.0.1:{double.port}/" in message for message in retries)
    assert not any(double.password in message or "s3cret" in message for message in retries)

    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 5
    double.inject(Fault.RESET, matching=PARQUET_PART.format(table="impressions"))
    incremental(settings)
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 2}
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 2}


def test_a_part_loaded_from_s3_is_resent_after_a_reset_and_counted_once(
    s3_settings: Settings, pg: psycopg.Connection, double: ClickHouseHttp
) -> None:
    # With S3 staging the server reads each part itself (INSERT … SELECT FROM s3()): the statement runs, the
    # connection breaks before the answer, and the resent statement is dropped by the part's token.
    from_s3 = r"^INSERT INTO .*`impressions` .*FROM s3\("
    seed_hand_built(pg)
    double.inject(Fault.RESET, matching=from_s3)
    full(s3_settings)

    assert len(double.statements(from_s3)) == 2
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 1}


def test_a_referral_events_insert_resent_after_a_reset_lands_once(
    settings: Settings, double: ClickHouseHttp, tmp_path: Path
) -> None:
    # The hand-built file stages 13 events on one day. The insert runs, the connection breaks before the answer,
    # the client resends it: the load's token drops the copy. A second load of the file replaces the day again.
    events = write(tmp_path / "events.jsonl", LINES)
    double.inject(Fault.RESET, matching="^INSERT INTO `?referral_events`? ")
    load_files(settings, [events])
    assert len(double.statements("^INSERT INTO `?referral_events`? ")) == 2
    assert clickhouse.connect(settings).command("SELECT count() FROM referral_events") == 13
    load_files(settings, [events])
    assert clickhouse.connect(settings).command("SELECT count() FROM referral_events") == 13
    assert reports(settings) == EXPECTED


def test_a_statement_unsafe_to_repeat_is_not_resent_and_the_next_sync_converges(
    settings: Settings, pg: psycopg.Connection, double: ClickHouseHttp
) -> None:
    seed_hand_built(pg)
    # EXCHANGE TABLES runs, then the answer is lost: a second run would swap the tables back, so adpipe stops.
    double.inject(Fault.RESET, matching="^EXCHANGE TABLES .*`impressions`")
    with pytest.raises(AdpipeError, match=r"cannot reach ClickHouse at http://adpipe:\*\*\*@127\.0\.0\.1"):
        try:
            full(settings)
        except Exception as exc:  # the CLI's mapping of a driver error to one line
            raise AdpipeError(describe_failure(exc) or "a bug") from exc
    assert len(double.statements("^EXCHANGE TABLES .*`impressions`")) == 1
    full(settings)
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 1}
    assert ch(settings, "SELECT day, sum(clicks) FROM campaign_daily GROUP BY day ORDER BY day") == [
        (date(2026, 11, 20), 1),
        (date(2026, 11, 21), 1),
    ]


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("SELEC 1", 62),  # SYNTAX_ERROR
        ("SELECT count() FROM no_such_table", 60),  # UNKNOWN_TABLE
        ("SELECT CAST('seven' AS UInt8)", 6),  # CANNOT_PARSE_TEXT: a value of the wrong type
        ("INSERT INTO no_such_table VALUES (1)", 60),
    ],
)
def test_a_bad_query_is_sent_once(settings: Settings, double: ClickHouseHttp, statement: str, code: int) -> None:
    client = clickhouse.connect(settings)
    with pytest.raises(WarehouseError) as raised:
        client.command(statement)
    assert raised.value.code == code
    assert not raised.value.transient
    assert len(double.statements("^" + statement.replace("(", r"\(").replace(")", r"\)"))) == 1
    message = describe_failure(raised.value)
    assert message is not None
    assert message.startswith(f"ClickHouse error at http://adpipe:***@127.0.0.1:{double.port}/: Code: {code}.")


def test_wrong_password_is_one_line_and_not_retried(
    settings: Settings, double: ClickHouseHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", double.url(password="not-the-password"))
    sent = len(double.requests)
    result = run_cli("init")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"error: ClickHouse at http://adpipe:***@127.0.0.1:{double.port}/: wrong user name or password (Code: 516."
    )
    assert "not-the-password" not in result.stderr + result.stdout
    assert len(double.requests) == sent + 1


def test_server_down_is_one_line_after_the_configured_retries(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_RETRIES", "2")
    with refused_port() as port, caplog.at_level(logging.WARNING, logger="pipeline.warehouse.client"):
        monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", f"http://adpipe:s3cret@127.0.0.1:{port}/adpipe")
        result = run_cli("status")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: cannot reach ClickHouse at http://adpipe:***@127.0.0.1:{port}/adpipe: ")
    assert "Connection refused" in result.stderr
    retries = [record.getMessage() for record in caplog.records if record.name == "pipeline.warehouse.client"]
    assert [message.rsplit(";", 1)[1] for message in retries] == [
        " retry 1 of 2 in 0.01 s",
        " retry 2 of 2 in 0.02 s",
    ]


def test_a_slow_answer_is_one_line_naming_the_read_timeout(
    settings: Settings, double: ClickHouseHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    double.inject(Fault.SLOW, matching="^SELECT 'slow'", delay=2.5)
    with monkeypatch.context() as env:
        env.setenv("ADPIPE_CLICKHOUSE_READ_TIMEOUT", "1")
        clickhouse.close_all()  # timeouts are set when the client is opened
        try:
            with pytest.raises(Exception) as raised:
                clickhouse.connect(load_settings()).command("SELECT 'slow'")
            assert describe_failure(raised.value) == (
                f"ClickHouse at http://adpipe:***@127.0.0.1:{double.port}/ did not answer within 1 s "
                "(ADPIPE_CLICKHOUSE_READ_TIMEOUT)"
            )
            assert is_transient(raised.value)  # a follower retries the run
        finally:
            clickhouse.close_all()
    assert len(double.statements("^SELECT 'slow'")) == 1  # waiting longer is not a retry's job


def test_unknown_database_without_creating_it(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_DATABASE", "no_such_database")
    expected = r"^ClickHouse at http://adpipe:\*\*\*@.*/: unknown database no_such_database$"
    with pytest.raises(AdpipeError, match=expected):
        clickhouse.connect(load_settings(), create_database=False)


def test_a_malformed_setting_is_one_line(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    clickhouse.close_all()
    with monkeypatch.context() as env:
        env.setenv("ADPIPE_CLICKHOUSE_CONNECT_TIMEOUT", "soon")
        result = run_cli("init")
    assert result.exit_code == 1
    expected = "error: ADPIPE_CLICKHOUSE_CONNECT_TIMEOUT must be a whole number of at least 1, got 'soon'\n"
    assert result.stderr == expected


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl command."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # what no_verify asks for
@pytest.mark.parametrize("trust", ["ca_cert", "no_verify", "nothing"])
def test_https_with_the_servers_ca_or_without_verification(
    settings: Settings,
    chdb_url: str,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    trust: str,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with ClickHouseHttp(chdb_url.removeprefix("chdb://")).running(ssl_context=context) as tls:
        monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", tls.url().replace("http://", "https://"))
        if trust == "ca_cert":
            monkeypatch.setenv("ADPIPE_CLICKHOUSE_CA_CERT", str(certificate[0]))
        if trust == "no_verify":
            monkeypatch.setenv("ADPIPE_CLICKHOUSE_VERIFY", "false")
        try:
            if trust == "nothing":
                with pytest.raises(AdpipeError) as raised:
                    clickhouse.connect(load_settings())
                assert str(raised.value).startswith(f"TLS with ClickHouse at https://adpipe:***@127.0.0.1:{tls.port}/")
                assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
                assert len(tls.requests) == 0  # no request is sent over an untrusted connection
            else:
                assert clickhouse.connect(load_settings()).command("SELECT 6 * 7") == 42
                assert len(tls.statements("^SELECT 6 \\* 7")) == 1
        finally:
            clickhouse.close_all()


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip"])
def test_the_double_serves_what_clickhouse_connect_sends(double: ClickHouseHttp, compress: str) -> None:
    """Beyond adpipe's own calls: a session's state, a compressed chunked Native insert, query parameters."""
    client = clickhouse_connect.get_client(
        dsn=double.url(), compress=compress, autogenerate_session_id=True, query_retries=0
    )
    try:
        client.command("CREATE TEMPORARY TABLE kept (n UInt32, s String)")  # lives as long as the session
        client.insert("kept", [[1, "one"], [2, "two"], [3, "three"]], column_names=["n", "s"])
        assert client.query("SELECT sum(n), max(s) FROM kept").result_rows == [(6, "two")]
        assert client.query("SELECT s FROM kept WHERE n = {n:UInt32}", parameters={"n": 3}).result_rows == [("three",)]
        assert client.command("SELECT count() FROM kept WHERE n > 5") == 0
    finally:
        client.close()
    inserts = double.statements("^INSERT INTO `?kept`? .*FORMAT Native")
    assert len(inserts) == 1


@pytest.mark.parametrize(
    ("credentials", "status", "body"),
    [
        ({"X-ClickHouse-User": "adpipe", "X-ClickHouse-Key": "s3cret pass"}, 200, b"2\n"),
        ({"X-ClickHouse-User": "adpipe", "X-ClickHouse-Key": "guess"}, 403, b"Code: 516. DB::Exception: adpipe: "),
        ({"X-ClickHouse-User": "nobody"}, 403, b"Code: 516. DB::Exception: nobody: "),
        ({}, 403, b"Code: 516. DB::Exception: default: "),  # no credentials: the default user, who is not configured
    ],
)
def test_the_double_authenticates_like_the_server(
    double: ClickHouseHttp, credentials: dict[str, str], status: int, body: bytes
) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{double.port}/?query=SELECT+1%2B1", headers=credentials, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answered, content, code = response.status, response.read(), response.headers["X-ClickHouse-Exception-Code"]
    except urllib.error.HTTPError as error:
        answered, content, code = error.code, error.read(), error.headers["X-ClickHouse-Exception-Code"]
    assert (answered, content[: len(body)]) == (status, body)
    assert code == (None if status == 200 else "516")
