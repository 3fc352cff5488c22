"""Every command shown in the README and the docs is executed by a test, so they cannot drift from the code.

The pages: README.md, then every Markdown file under docs/ (found by glob, subdirectories included,
in path order: design.md, kpis.md, operations.md, …), so a new page is scanned without being listed
here. A test fails when the glob finds none, when a Markdown file of the project is not among the
pages, or when the README does not link to a page.

What counts as shown: every line of a fenced code block tagged `bash`, `sh`, `shell` or `console`
(in `console` blocks only the `$ ` lines; the rest is output). A line ending in `\\` continues on
the next. Every other fenced block must carry a tag too, so no command hides in an untagged block.

How each command is treated:
- `adpipe …` — directly, after `uv run`, or after `NAME=value` prefixes, which are set in the
  environment for that command (`$VAR` in a value expanded, as the shell would) — runs in process
  (`run_cli`, exactly what the console script runs), in page order (the README, then the docs pages
  in path order) and in each page's order, all in ONE fresh embedded environment shared by the pages,
  so a page's commands may rely on what earlier pages did (the docs pages start from the data the
  README's `demo` and syncs leave; operations.md's failing incremental sync needs an earlier sync):
  its own ADPIPE_HOME and staging directory, the embedded Postgres started on demand, as with no
  configuration, and a ClickHouse database of its own in the session's chDB engine (one data
  directory per process). It must exit 0, unless the line ends with the comment
  `# exits N: message`: then it must exit N and print `message` on stderr. A line whose comment
  starts `# runs until SIGTERM` (`sync --follow`) runs in a subprocess instead (the engine handed to
  it), is sent SIGTERM once it has synced, and must then exit 0.
- Anything else must start with a prefix listed in NOT_EXECUTED, with the reason it is not run here.
  A command that is neither fails `test_every_documented_command_is_executed_or_listed`.
- A `sql` block is a ClickHouse query: it runs against the warehouse at its place in that order
  (after the commands above it) and must return rows.
- A `mermaid` block must be a flowchart whose edges only use nodes it declares with a label; the
  README must have one (the architecture diagram).
- A link to a heading (`#anchor`) or to another page (`docs/design.md#…`, `../README.md#…`) must
  reach a file that exists and, with an anchor, a heading of it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings, load_settings
from pipeline.errors import AdpipeError
from pipeline.options import Mode
from pipeline.source.generate import Generator, reset
from pipeline.source.postgres import EmbeddedPostgres
from pipeline.sync.run import SyncOptions, sync
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]
"""The pages whose commands run, in this order."""

NOT_EXECUTED: dict[str, str] = {
    "uv run pytest": "the test suite, which runs this test",
    "pip install": "installs a built wheel into another environment; the `adpipe` commands after it run here "
    "in process, from this checkout",
    "uv run ruff check": "the linter; .ci/run runs it on every CI build",
    "bash .ci/run": "CI's entry point: a clean install, the linter and the whole suite",
    "uv run --group notebook jupyter nbconvert --clear-output": "rewrites the committed notebooks in place; "
    "test_notebooks checks they are stored in the cleared state this command produces",
    "ADPIPE_TEST_CLICKHOUSE_URL=": "the suite against a real ClickHouse server (the compose stack, needs Docker); "
    "the same tests run here on the embedded engine and through the HTTP double",
    "docker compose": "needs a Docker engine, which the CI machine does not have",
    "export ADPIPE_POSTGRES_URL=": "points adpipe at the compose Postgres (needs Docker); "
    "the adpipe commands after it run here against the embedded default",
    "export ADPIPE_CLICKHOUSE_URL=": "points adpipe at the compose ClickHouse (needs Docker); "
    "the adpipe commands after it run here against the embedded default",
}
"""Commands the pages show that this test does not run: prefix → why. Add new ones here."""

SHELL_TAGS = {"bash", "sh", "shell", "console"}
OTHER_TAGS = {"sql", "mermaid", "text", "json", "python", "yaml", "toml", "dotenv", "ini"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
EXPECTED_EXIT = re.compile(r"^exits (\d+): (.+)$")
SHELL_OPERATORS = re.compile(r"^[;&|<>()]+$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Block:
    line: int
    tag: str
    text: str
    page: str = "README.md"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    expected_exit: int = 0
    expected_stderr: str | None = None
    until_signal: bool = False
    """Runs until it gets SIGTERM (`# runs until SIGTERM`)."""
    problem: str | None = None
    page: str = "README.md"

    @property
    def is_adpipe(self) -> bool:
        return self.problem is None and bool(self.args)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(markdown: str, page: str = "README.md") -> list[Block]:
    """The fenced code blocks of a Markdown text: opening line number, tag, body."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, start = opening.group(1), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(start + 1, opening.group(2).lower(), "\n".join(body), page))
        i += 1
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """`code`, `comment` of a shell line: a `#` outside quotes, at the start or after a blank, opens the comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(page line, command) for each command of a shell block, continuation lines joined."""
    pending, first = "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.strip()
        if block.tag == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        elif line.startswith("$ "):
            line = line[2:]
        if not pending:
            first = offset
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            yield first, line


def parse_command(line_number: int, line: str, page: str = "README.md") -> Command:
    code, comment = split_comment(line)
    text = " ".join(code.split())
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    env = {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        name, value = tokens.pop(0).split("=", 1)
        env[name] = value
    if tokens[:3] == ["uv", "run", "adpipe"]:
        tokens = tokens[2:]
    if tokens[:1] != ["adpipe"]:
        return Command(line_number, text, page=page)
    if any(SHELL_OPERATORS.match(token) for token in tokens):
        return Command(line_number, text, problem="pipes, redirections and `;`/`&&` cannot run in process", page=page)
    expected = EXPECTED_EXIT.match(comment)
    if comment.startswith("exits") and not expected:
        return Command(
            line_number, text, problem="write the expected outcome as `# exits N: message on stderr`", page=page
        )
    return Command(
        line_number,
        text,
        tuple(tokens[1:]),
        env,
        int(expected.group(1)) if expected else 0,
        expected.group(2) if expected else None,
        until_signal=comment.startswith("runs until SIGTERM"),
        page=page,
    )


def not_executed_reason(command: Command) -> str | None:
    return next((reason for prefix, reason in NOT_EXECUTED.items() if command.text.startswith(prefix)), None)


def page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def page_steps(markdown: str, page: str = "README.md") -> list[Command | Block]:
    """In page order: the commands of every shell block, and every `sql` block."""
    steps: list[Command | Block] = []
    for block in fenced_blocks(markdown, page):
        if block.tag in SHELL_TAGS:
            steps += [parse_command(number, line, page) for number, line in shell_lines(block)]
        elif block.tag == "sql":
            steps.append(block)
    return steps


TEXTS = {page_name(path): path.read_text() for path in PAGES}
"""Each page's Markdown, by its path in the repository, in page order."""
BLOCKS = [block for page, markdown in TEXTS.items() for block in fenced_blocks(markdown, page)]
STEPS = [step for page, markdown in TEXTS.items() for step in page_steps(markdown, page)]
COMMANDS = [step for step in STEPS if isinstance(step, Command)]


def project_markdown() -> set[str]:
    """Every Markdown file of the project, hidden directories (.venv, .git, .adpipe…) left out."""
    found = set()
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".") and name != "node_modules"]
        found.update(page_name(Path(directory) / name) for name in files if name.endswith(".md"))
    return found


def test_every_page_is_scanned_and_linked_from_the_readme() -> None:
    assert DOCS, "no docs/*.md found: the documentation pages were moved, or this test looks in the wrong place"
    assert sorted(project_markdown() - set(TEXTS)) == [], "Markdown files whose commands this test does not run"
    linked = {resolve_link(README, target)[0] for target in links(TEXTS["README.md"])}
    unlinked = [page_name(path) for path in DOCS if path not in linked]
    assert unlinked == [], "the README links to every docs page, with a line saying what is there"


def test_every_documented_command_is_executed_or_listed() -> None:
    untagged = [block.where for block in BLOCKS if block.tag not in SHELL_TAGS | OTHER_TAGS]
    assert not untagged, f"{untagged}: tag every code block (bash, console, sql, mermaid, text…)"
    problems = [f"{c.where}: {c.text}: {c.problem}" for c in COMMANDS if c.problem]
    unlisted = [f"{c.where}: {c.text}" for c in COMMANDS if not c.is_adpipe and not not_executed_reason(c)]
    assert not problems, "\n".join(problems)
    assert not unlisted, "commands neither executed nor listed in NOT_EXECUTED (with a reason):\n" + "\n".join(unlisted)
    unused = [prefix for prefix in NOT_EXECUTED if not any(c.text.startswith(prefix) for c in COMMANDS)]
    assert not unused, f"NOT_EXECUTED lists commands the pages no longer show: {unused}"
    assert sum(c.is_adpipe for c in COMMANDS) >= 30, "the pages' adpipe commands were not found"
    assert any(c.is_adpipe for c in COMMANDS if c.page == "README.md"), "the README's quickstart runs no adpipe command"


MERMAID_ARROW = re.compile(r"\s*(?:-->|-\.->|==>|---)(?:\|[^|]*\|)?\s*")
MERMAID_NODE = re.compile(r"^(\w+)\s*[\[({>]")


def mermaid_problems(diagram: str) -> list[str]:
    """What is wrong with a flowchart written as node declarations (`id["label"]`) then edges between bare ids.

    Mermaid silently draws an undeclared id as a box showing the id, so a typo in an edge goes unnoticed
    when rendered; here it is an error, as is a declared node no edge uses.
    """
    lines = [line.strip() for line in diagram.splitlines() if line.strip() and not line.strip().startswith("%%")]
    if not lines or not re.fullmatch(r"flowchart (LR|RL|TB|TD|BT)", lines[0]):
        return ["the diagram must start with `flowchart LR` (or RL, TB, TD, BT)"]
    declared, used, problems = set(), set(), []
    for line in lines[1:]:
        if MERMAID_ARROW.search(line):
            ids = MERMAID_ARROW.split(line)
            problems += [f"edge `{line}`: `{i}` is not a bare node id" for i in ids if not re.fullmatch(r"\w+", i)]
            used.update(ids)
        elif node := MERMAID_NODE.match(line):
            declared.add(node.group(1))
        else:
            problems.append(f"neither a node declaration nor an edge: `{line}`")
    problems += [f"`{i}` is used in an edge but not declared" for i in sorted(used - declared)]
    problems += [f"`{i}` is declared but no edge uses it" for i in sorted(declared - used)]
    return problems


def test_mermaid_diagrams_are_consistent() -> None:
    diagrams = [block for block in BLOCKS if block.tag == "mermaid"]
    assert any(block.page == "README.md" for block in diagrams), "the README's architecture diagram is missing"
    for block in diagrams:
        assert mermaid_problems(block.text) == [], block.where


def test_mermaid_problems_catch_an_undeclared_node() -> None:
    diagram = 'flowchart LR\n    pg[("Postgres")]\n    ch["ClickHouse"]\n    pg --> ch\n    ch -.->|KPIs| kpis'
    assert mermaid_problems(diagram) == ["`kpis` is used in an edge but not declared"]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, a repeated one numbered as GitHub does (`-1`, `-2`…)."""
    fenced = {line for block in fenced_blocks(markdown) for line in block.text.splitlines()}
    anchors: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("#") and line not in fenced:
            base = heading_anchor(line.lstrip("#"))
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(markdown: str) -> list[str]:
    """The targets of a page's Markdown links, other sites left out."""
    return [target for target in LINK.findall(markdown) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def resolve_link(page: Path, target: str) -> tuple[Path, str]:
    """(file, anchor) a link on `page` points to: `#a` on the page itself, `other.md#a` relative to it."""
    path, _, anchor = target.partition("#")
    return (page.parent / path).resolve() if path else page, anchor


def broken_links(root: Path, texts: dict[str, str]) -> list[str]:
    """Links of the pages (path under `root` → Markdown) to a file that does not exist, or to a heading it lacks."""
    anchors = {root / page: heading_anchors(markdown) for page, markdown in texts.items()}
    broken = []
    for page, markdown in texts.items():
        for target in links(markdown):
            path, anchor = resolve_link(root / page, target)
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{page}: ({target}): no such file")
            elif anchor and path.suffix == ".md":
                known = anchors[path] if path in anchors else heading_anchors(path.read_text())
                if anchor not in known:
                    broken.append(f"{page}: ({target}): no such heading in {path.relative_to(root).as_posix()}")
    return broken


def test_links_between_and_within_pages_resolve() -> None:
    assert any(links(markdown) for markdown in TEXTS.values()), "no links found"
    assert broken_links(ROOT, TEXTS) == []


def test_broken_links_catch_a_missing_page_and_a_missing_heading(tmp_path: Path) -> None:
    texts = {
        "README.md": "# adpipe\n## Configuration\n[a](docs/a.md#how-it-works) [b](docs/b.md) [c](#configuration)\n",
        "docs/a.md": "# A\n## How it works\n[back](../README.md#configuration) [gone](../README.md#layout)\n",
    }
    for page, markdown in texts.items():
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(markdown)
    assert broken_links(tmp_path, texts) == [
        "README.md: (docs/b.md): no such file",
        "docs/a.md: (../README.md#layout): no such heading in README.md",
    ]


@pytest.fixture
def embedded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The test's fresh environment with no Postgres configured: the embedded server, as a new user gets it."""
    monkeypatch.delenv("ADPIPE_POSTGRES_URL")
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    embedded_settings = load_settings()
    yield embedded_settings
    EmbeddedPostgres(embedded_settings.embedded_postgres_dir).stop()


def test_documented_commands_run_in_order(embedded: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in STEPS:
        if isinstance(step, Block):
            rows = clickhouse.connect(load_settings()).query(step.text).result_rows
            assert rows, f"{step.where}: the query returned no rows"
            continue
        if not step.is_adpipe:
            continue
        with monkeypatch.context() as scoped:
            for name, value in step.env.items():
                scoped.setenv(name, os.path.expandvars(value))
            if step.until_signal:
                run_until_signal(step)
                continue
            try:
                result = run_cli(*step.args)
            except Exception as exc:  # a bug: keep its traceback, and say which page and line hit it
                exc.add_note(f"{step.where}: {step.text}")
                raise
        where = f"{step.where}: {step.text}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.exit_code == step.expected_exit, where
        if step.expected_stderr is not None:
            assert step.expected_stderr in " ".join(result.stderr.split()), where


def run_until_signal(step: Command) -> None:
    """Run a documented long-running command (a follower) as the user would, then stop it as systemd would."""
    clickhouse.close_all()  # the embedded engine serves one process: the follower's, until it stops
    out = Path(tempfile.mkstemp(suffix=".out")[1])
    with out.open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *step.args], stdout=stdout, stderr=subprocess.PIPE, text=True
        )
    try:
        wait_until(lambda: "Following the source" in out.read_text() or process.poll() is not None, 120, step.text)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    where = f"{step.where}: {step.text}\nstdout:\n{out.read_text()}\nstderr:\n{stderr}"
    assert process.returncode == 0, where
    assert out.read_text().splitlines()[-1] == "Stopped after the current run.", where


def test_documented_sync_runs_query_shows_each_run_and_its_outcome(settings: Settings, pg: psycopg.Connection) -> None:
    (query,) = [step.text for step in STEPS if isinstance(step, Block) and "FROM sync_runs" in step.text]
    Generator(pg, seed=3).batch(advertisers=2, campaigns=2, impressions=200, ctr=0.1)
    sync(settings, SyncOptions(mode=Mode.FULL))
    reset(pg)
    Generator(pg, seed=4).batch(advertisers=1, campaigns=1, impressions=10, ctr=0.1)
    with pytest.raises(AdpipeError, match="the source was reset"):
        sync(settings, SyncOptions())
    rows = clickhouse.connect(settings).query(query).named_results()
    failed, full = list(rows)
    assert (failed["mode"], failed["status"], failed["rows_loaded"]) == ("incremental", "failed", 0)
    assert "the source was reset (clicks, impressions truncated)" in failed["error"]
    # 2 advertisers + 2 × 2 campaigns + 4 × 200 impressions + 4 × 20 clicks, nothing quarantined.
    assert (full["mode"], full["status"], full["rows_loaded"], full["quarantined"]) == ("full", "success", 886, 0)
    assert full["error"] is None
    assert full["seconds"] > 0
    assert full["run_id"] < failed["run_id"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "uv run adpipe sync --mode full   # reload",
            Command(1, "uv run adpipe sync --mode full", ("sync", "--mode", "full")),
        ),
        (
            "ADPIPE_STAGING_DIR=/tmp/s adpipe snapshots list",
            Command(
                1,
                "ADPIPE_STAGING_DIR=/tmp/s adpipe snapshots list",
                ("snapshots", "list"),
                {"ADPIPE_STAGING_DIR": "/tmp/s"},
            ),
        ),
        (
            "uv run adpipe sync  # exits 1: the source was reset",
            Command(1, "uv run adpipe sync", ("sync",), expected_exit=1, expected_stderr="the source was reset"),
        ),
        (
            "uv run adpipe sync --follow  # runs until SIGTERM (or Ctrl-C)",
            Command(1, "uv run adpipe sync --follow", ("sync", "--follow"), until_signal=True),
        ),
        ("docker compose up -d  # start", Command(1, "docker compose up -d")),
        (
            "adpipe kpi list | head",
            Command(1, "adpipe kpi list | head", problem="pipes, redirections and `;`/`&&` cannot run in process"),
        ),
    ],
)
def test_parse_command(line: str, expected: Command) -> None:
    assert parse_command(1, line) == expected


def test_shell_lines_join_continuations_and_skip_console_output() -> None:
    block = Block(
        10,
        "console",
        "$ adpipe kpi campaign_ctr \\\n    --format csv\ncampaign_id,impressions\n$ adpipe status  # a # b",
    )
    assert list(shell_lines(block)) == [(11, "adpipe kpi campaign_ctr --format csv"), (14, "adpipe status  # a # b")]
