"""Where benchmark figures go: one folder per run with ``SUITE.md``, ``SUITE.json`` and
plots, each recording the machine it was measured on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from threshold_fl._checks import bounded

__all__ = ["BENCH_FRACTION", "add_role_options", "machine_info", "markdown_table", "peak_mib",
           "print_line", "progress_for", "publish_suite", "reset_peak", "status_mib",
           "suite_error", "write_suite"]

# The benchmarks' figures (docs/benchmarks.md) are for the paper's selective 10 %, not
# the demo's default (everything encrypted); --fraction 1 measures that.
BENCH_FRACTION = 0.1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The machine and library versions, recorded with every figure."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "python": platform.python_version(), "system": platform.platform(),
            "openfhe": _version("openfhe"), "tenseal": _version("tenseal"),
            "threshold_fl": _version("threshold-fl"),
            # OpenFHE parallelises with OpenMP; unset means one thread per core.
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_suite(folder: Path, suite: str, title: str, table: str, data: dict[str, Any],
                notes: str = "") -> tuple[Path, Path]:
    """Write ``SUITE.md`` (title, machine, table, notes) and ``SUITE.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    described = (f"Measured on {machine['cpu']} ({machine['cores']} cores, "
                 f"{machine['memory_gib']} GiB), Python {machine['python']}, "
                 f"OpenFHE {machine['openfhe']}, TenSEAL {machine['tenseal']}, "
                 f"OMP_NUM_THREADS={machine['omp_num_threads']}.")
    markdown = f"# {title}\n\n{described}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    markdown_path, json_path = folder / f"{suite}.md", folder / f"{suite}.json"
    markdown_path.write_text(markdown, encoding="utf-8")
    json_path.write_text(json.dumps({"suite": suite, "machine": machine, **data}, indent=2)
                         + "\n", encoding="utf-8")
    return markdown_path, json_path


def publish_suite(folder: Path, suite: str, title: str, columns: Sequence[str],
                  rows: Sequence[Any], data: dict[str, Any], *, plot: Callable[[Path], None],
                  notes: str = "", headline: str = "") -> None:
    """Write ``SUITE.md`` and ``.json`` with the rows (dataclasses with ``cells()``), draw
    ``SUITE.png`` with ``plot`` and say where they went, after ``headline``."""
    table = markdown_table(columns, [row.cells() for row in rows])
    paths = write_suite(folder, suite, title, table,
                        {"rows": [asdict(row) for row in rows], **data}, notes=notes)
    plot_path = folder / f"{suite}.png"
    plot(plot_path)
    print(f"\n{headline}" if headline else "")
    print(f"wrote {paths[0]}, {paths[1]} and {plot_path}")


def add_role_options(parser: argparse.ArgumentParser, suite: str, seed_help: str) -> None:
    """``--threads``, ``--seed`` and ``--out`` of the suites that run one process per role."""
    parser.add_argument("--threads", type=bounded(int, 0, 256), default=1,
                        help="OpenMP threads per role process (0: OpenMP's default, all "
                             "cores; default 1, stable when other work shares the cores)")
    parser.add_argument("--seed", type=bounded(int, 0), default=0,
                        help=f"seed of {seed_help} (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help=f"folder for {suite}.md, .json and .png (default %(default)s)")


# -- what every suite prints while it runs -------------------------------------------
def print_line(cells: Iterable[object]) -> None:
    """One table line (a header or a row's cells) as soon as it is known: the progress."""
    print(" | ".join(str(cell) for cell in cells), flush=True)


def progress_for(label: str) -> Callable[[str], None]:
    """A progress callback that prefixes a slow row's messages with ``[label]``."""
    def progress(message: str) -> None:
        print(f"  [{label}] {message}", flush=True)
    return progress


def suite_error(suite: str, error: Exception) -> int:
    """Say what went wrong the way every suite does, and give the exit code (1)."""
    print(f"threshold-fl bench {suite}: error: {error}", file=sys.stderr)
    return 1


def status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` in MiB: ``VmHWM`` (peak resident) or
    ``VmRSS`` (resident now), of this process or of *pid*; None where there is none
    (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_mib() -> float:
    """This process's own peak resident memory so far, in MiB.

    ``VmHWM`` belongs to the process's address space, which ``exec`` replaces;
    ``ru_maxrss`` does not reset at ``exec``, so a role started from a large
    parent (``bench all`` after the selective suite) would report the parent's
    peak instead of its own.
    """
    peak = status_mib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> None:
    """Start this process's ``peak_mib`` afresh (Linux >= 4.0; elsewhere a no-op).

    ``bench all`` runs suites one after another in one process; without this a
    suite would report the peak of the suites before it.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass
