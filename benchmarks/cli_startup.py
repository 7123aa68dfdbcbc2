"""How long the ``feature-store`` command takes to start: wall time of whole processes, median of N runs.

Times ``feature-store --version``, ``--help``, and ``list`` and ``plan`` against a small temporary repo (the
example definitions with 100 customers x 30 days of example data, applied once before timing). Every run is a
new process, as a user's shell starts it; the figures include Python's own start-up.

The code measured is whichever ``feature_store`` the interpreter imports (PYTHONPATH first): the script prints
its location, so a run against another checkout (``PYTHONPATH=/tmp/cli-base``) says so.

    python benchmarks/cli_startup.py                 # 15 runs of each command
    python benchmarks/cli_startup.py --runs 30 --command "python -m feature_store"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import loadavg, print_command_and_machine, print_table


def default_command() -> list[str]:
    """The console script next to this interpreter (what ``make demo`` runs), else ``python -m feature_store``."""
    script = Path(sys.executable).parent / "feature-store"
    return [str(script)] if script.exists() else [sys.executable, "-m", "feature_store"]


def run(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed with status {done.returncode}:\n{done.stderr}")
    return seconds


def make_repo(base: list[str], root: Path) -> Path:
    """The example repo with a little data, applied: what list and plan read."""
    repo = root / "repo"
    for args in (["init", str(repo), "--no-data"],
                 ["--repo", str(repo), "generate-data", "--customers", "100", "--days", "30"],
                 ["--repo", str(repo), "apply"]):
        run([*base, *args], root)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="processes per command (default 15)")
    parser.add_argument("--command", help="how to start the CLI (default: the feature-store script of this Python)")
    args = parser.parse_args()
    base = shlex.split(args.command) if args.command else default_command()

    print_command_and_machine("")
    # Every process runs in an empty temp folder: ``python -m`` puts the working folder first on sys.path.
    root = Path(tempfile.mkdtemp(prefix="fs_cli_startup_"))
    try:
        where = subprocess.run([sys.executable, "-c", "import feature_store; print(feature_store.__file__)"],
                               capture_output=True, text=True, check=True, cwd=root).stdout.strip()
        print(f"feature_store imported from: {where} (PYTHONPATH={os.environ.get('PYTHONPATH', '')!r})")
        repo = make_repo(base, root)
        cases = {
            "--version": [*base, "--version"],
            "--help": [*base, "--help"],
            "list": [*base, "--repo", str(repo), "list"],
            "plan": [*base, "--repo", str(repo), "plan"],
        }
        for command in cases.values():  # warm the file cache once, untimed
            run(command, root)
        print(f"load average before: {loadavg()}")
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so that a change of load hits every command alike
            for name, command in cases.items():
                times[name].append(run(command, root))
        print(f"load average after: {loadavg()}")
        rows = [{"command": shlex.join(command), "runs": str(len(times[name])),
                 "median s": f"{statistics.median(times[name]):.3f}",
                 "min s": f"{min(times[name]):.3f}", "max s": f"{max(times[name]):.3f}"}
                for name, command in cases.items()]
        print()
        print_table(rows, ["command", "runs", "median s", "min s", "max s"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
