"""Run every benchmark, each in its own process, and print a markdown table of their ratios.

Each benchmark script prints readable lines and, as its last line, ``RATIO <name> <value>``;
this runner streams their output, collects the RATIO lines and ends with a table of
benchmark, ratio, goal, whether the goal is met, and the command that reproduces the row.
A script that does not exist yet is skipped with a line saying so. ``peer_sam2`` compares with
Meta's official ``sam2`` trainer and needs that package (its ``training`` module): it runs with
``--official-python`` (default: this Python) when that interpreter can import it, and is
otherwise skipped with a line saying why.

    python benchmarks/run_all.py [--only loop_overhead metrics_speed] [--markdown FILE]
        [--official-python /path/to/venv-with-sam2/bin/python]

Exit status: 0 when every benchmark printed its ratio (goals missed are reported in the
table, not as a failure: timings on a shared machine are not a test), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """One script ``benchmarks/<name>.py`` and the goal its ratio is held to (``op`` and
    ``goal`` None: a ratio reported for information, with no goal set)."""

    name: str
    op: str | None = None  # "<=" or ">="
    goal: float | None = None
    #: the RATIO's name when it is not the script's
    ratio: str | None = None
    #: a module the script needs (run with ``--official-python`` when set)
    requires: str | None = None
    #: seconds allowed (None: ``--timeout``)
    timeout: float | None = None
    #: further RATIO lines the script prints before its last one: (name, op, goal)
    extra: tuple[tuple[str, str | None, float | None], ...] = ()

    @property
    def ratio_name(self) -> str:
        return self.ratio or self.name

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    @property
    def command(self) -> str:
        return f"python benchmarks/{self.name}.py"

    def met(self, value: float) -> bool | None:
        if self.goal is None:
            return None
        return value <= self.goal if self.op == "<=" else value >= self.goal

    @property
    def goal_text(self) -> str:
        return "none set" if self.goal is None else f"{self.op} {self.goal:g}"


BENCHMARKS = (
    Benchmark("loop_overhead", "<=", 1.03),
    # measured speedup / ideal speedup (uncached / (uncached - encoder time)), same run
    Benchmark("cache_speedup", ">=", 0.9, ratio="cache_efficiency", timeout=900.0),
    Benchmark("cache_speedup_sam3", ">=", 0.9, ratio="cache_efficiency_sam3"),
    Benchmark("data_headroom", ">=", 5.0),
    Benchmark("arrow_reload", ">=", 50.0),
    Benchmark("metrics_speed", ">=", 1.0),
    # not an issue goal: our own bar for "8-bit AdamW keeps ~2 bytes/param instead of 8"
    Benchmark("optimizer_memory", ">=", 3.5),
    # sam_hf vs Meta's official SAM2 trainer, one training step at equal work
    Benchmark(
        "peer_sam2",
        ">=",
        1.0,
        ratio="peer_sam2_memory",
        requires="training.model.sam2",
        timeout=900.0,
        extra=(
            ("peer_sam2_speed", ">=", 1.0),
            ("peer_sam2_plain_speed", None, None),
            ("peer_sam2_plain_memory", None, None),
        ),
    ),
)


@dataclass
class Result:
    bench: Benchmark
    value: float | None
    seconds: float
    error: str = ""
    extras: list[Result] = field(default_factory=list)


def parse_named(stdout_lines: list[str], name: str) -> float | None:
    """The value of the last ``RATIO <name> <value>`` line anywhere in the output, or None."""
    for ln in reversed(stdout_lines):
        parts = ln.split()
        if len(parts) == 3 and parts[:2] == ["RATIO", name]:
            return float(parts[2])
    return None


def parse_ratio(stdout_lines: list[str], name: str) -> float:
    """The value of the last line, which must read ``RATIO <name> <value>``."""
    lines = [ln.strip() for ln in stdout_lines if ln.strip()]
    if not lines:
        raise ValueError("printed nothing")
    parts = lines[-1].split()
    if len(parts) != 3 or parts[0] != "RATIO":
        raise ValueError(f"last line is not a RATIO line: {lines[-1]!r}")
    if parts[1] != name:
        raise ValueError(f"RATIO line names {parts[1]!r}, expected {name!r}")
    return float(parts[2])


def run_one(bench: Benchmark, timeout: float, python: str = sys.executable) -> Result:
    """Run one script, streaming its stdout (indented); stderr is shown only on failure."""
    print(f"\n=== {bench.name}: {bench.command}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [python, str(bench.script)],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        watchdog = threading.Timer(timeout, proc.kill)  # also fires when nothing is printed
        watchdog.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                print(f"    {line}", end="", flush=True)
            rc = proc.wait()
        finally:
            watchdog.cancel()
        timed_out = rc != 0 and time.perf_counter() - start >= timeout
        seconds = time.perf_counter() - start
        if timed_out:
            return Result(bench, None, seconds, f"timed out after {timeout:.0f} s")
        if rc != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()[-15:]
            print("\n".join(f"    ! {t}" for t in tail), flush=True)
            return Result(bench, None, seconds, f"exit code {rc}")
    try:
        result = Result(bench, parse_ratio(lines, bench.ratio_name), seconds)
    except ValueError as e:
        return Result(bench, None, seconds, str(e))
    for name, op, goal in bench.extra:
        value = parse_named(lines, name)
        extra = Benchmark(bench.name, op, goal, ratio=name)
        result.extras.append(Result(extra, value, seconds, "" if value is not None else "missing"))
    return result


def can_import(python: str, module: str) -> str:
    """Empty when ``python`` can import ``module``, else the error's last line."""
    proc = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, text=True, cwd=HERE.parent
    )
    if proc.returncode == 0:
        return ""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def table(results: list[Result]) -> str:
    rows = [
        "| benchmark | ratio | goal | met | time | command |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in [x for res in results for x in (res, *res.extras)]:
        b = r.bench
        value = f"{r.value:.3f}" if r.value is not None else f"failed ({r.error})"
        verdict = b.met(r.value) if r.value is not None else False
        met = {True: "yes", False: "no", None: "-"}[verdict]
        rows.append(
            f"| {b.ratio_name} | {value} | {b.goal_text} | {met} | {r.seconds:.0f} s | "
            f"`{b.command}` |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=[b.name for b in BENCHMARKS],
        help="run only these benchmarks",
    )
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="seconds allowed to each benchmark"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--official-python",
        default=sys.executable,
        help="interpreter for benchmarks that need Meta's official packages (peer_sam2)",
    )
    args = parser.parse_args()

    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    C.print_machine()
    results: list[Result] = []
    start = time.perf_counter()
    for bench in selected:
        if not bench.script.is_file():
            print(f"\n=== {bench.name}: skipped ({bench.script.name} does not exist yet)")
            continue
        python = sys.executable
        if bench.requires:
            python = args.official_python
            why = can_import(python, bench.requires)
            if why:
                print(
                    f"\n=== {bench.name}: skipped ({python} cannot import {bench.requires}: "
                    f"{why}; pass --official-python with a venv that has the official sam2 "
                    "package, e.g. pip install -e '.[official]')"
                )
                continue
        results.append(run_one(bench, bench.timeout or args.timeout, python))
    total = time.perf_counter() - start

    text = table(results)
    print(f"\nAll benchmarks: {total / 60:.1f} min\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    ok = all(x.value is not None for r in results for x in (r, *r.extras))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
