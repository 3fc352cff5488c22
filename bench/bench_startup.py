"""Start-up of the commands a user types most, against a bare two-command Typer app in the same venv.

    uv sync --compile-bytecode && uv run python bench/bench_startup.py [--rounds 15]

Each round runs every command once, in turn, so load on the machine falls on all of them alike; the figure per
command is the median process wall time over the rounds, and its ratio to the bare app. `stats` reads the source
Postgres (the embedded one unless ADPIPE_POSTGRES_URL is set): it is timed with the server already running.
Also prints `python -X importtime` totals for `import pipeline.cli` and the bare app.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = """
import typer
app = typer.Typer()
@app.command()
def a() -> None: ...
@app.command()
def b() -> None: ...
app()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bare = Path(scratch) / "bare.py"
        bare.write_text(BARE_APP)
        commands = {
            "bare Typer --help": [sys.executable, str(bare), "--help"],
            "adpipe --help": [sys.executable, "-m", "pipeline", "--help"],
            "adpipe kpi list": [sys.executable, "-m", "pipeline", "kpi", "list"],
            "adpipe stats": [sys.executable, "-m", "pipeline", "stats"],
        }
        subprocess.run(commands["adpipe stats"], check=True, capture_output=True)  # the embedded server is up
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                began = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(time.perf_counter() - began)
        bare_median = statistics.median(times["bare Typer --help"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:18} median {median:5.3f} s  ({median / bare_median:4.2f}x the bare app)  over {args.rounds}")
        for label, code in (("import pipeline.cli", "import pipeline.cli"), ("import typer", "import typer")):
            report = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
            total = sum(int(m) for m in re.findall(r"^import time:\s+(\d+) \|", report.stderr, re.M))
            print(f"-X importtime {label:20}: {total / 1000:6.1f} ms (sum of self times)")


if __name__ == "__main__":
    main()
