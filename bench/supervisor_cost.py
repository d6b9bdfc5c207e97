"""What the per-job supervisor costs (not a test): a trivial job started the way the executor did
before supervisors (``/bin/bash script``), through the shell supervisor (``/bin/sh -c WRAPPER``
starting ``setsid /bin/bash script`` and recording its exit) and through the compiled one
(``conductor-job script``, built here when a C compiler is at hand), one at a time, as the executor
spawns them.

    python bench/supervisor_cost.py [--jobs 500] [--rounds 3]

Prints wall time and CPU (this process plus its children) per job for each form, and, for scale, a
Python interpreter per job (what a supervisor written in Python would cost at least).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conductor_executor import compiled
from conductor_executor import supervision as sv
from conductor_executor.process import setsid_program


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def per_job(argv: list[str], jobs: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per job."""
    cpu, wall = _cpu_s(), time.perf_counter()
    for _ in range(jobs):
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True).wait()
    return (time.perf_counter() - wall) * 1000 / jobs, (_cpu_s() - cpu) * 1000 / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "script.sh"
        script.write_text("true\n")
        forms = {
            "bash script (before)": ["/bin/bash", str(script)],
            "shell supervisor": ["/bin/sh", "-c", sv.WRAPPER, sv.ARGV0, str(script), setsid_program()],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        built = compiled.build(Path(folder) / "bin")
        if built is not None:
            forms["compiled supervisor"] = [str(built), str(script)]
        else:
            print("no C compiler here: the compiled supervisor is left out")
        for round_ in range(1, args.rounds + 1):
            for name, argv in forms.items():
                jobs = args.jobs if "python" not in name else max(1, args.jobs // 10)
                wall, cpu = per_job(argv, jobs)
                print(f"round {round_}  {name:22} {wall:6.2f} ms wall/job  {cpu:6.2f} ms CPU/job")
        assert sv.read_exit(Path(folder)) is not None, "the supervisor recorded no exit"


if __name__ == "__main__":
    main()
