"""A job is pinned to its CPUs from its first instruction, by the thread that starts it, which then
returns to where it was; a CPU the machine does not have is refused as ``os.sched_setaffinity``
refuses it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from conductor_executor import compiled
from conductor_executor import supervision as sv
from conductor_executor.affinity import move_thread
from conductor_executor.process import start_supervisor


def _allowed(status: str) -> set[int]:
    line = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
    cpus: set[int] = set()
    for part in line.split(":", 1)[1].strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def test_the_calling_thread_and_what_it_starts_run_on_the_cpus_given() -> None:
    machine = sorted(os.sched_getaffinity(0))
    seen: dict[str, object] = {}

    def in_a_thread() -> None:
        move_thread({machine[-1]})
        seen["thread"] = os.sched_getaffinity(0)
        seen["child"] = _allowed(subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout)
        move_thread(machine)
        seen["back"] = os.sched_getaffinity(0)

    before = os.sched_getaffinity(0)
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen == {"thread": {machine[-1]}, "child": {machine[-1]}, "back": set(machine)}
    assert os.sched_getaffinity(0) == before  # another thread's move is not this one's


def test_a_cpu_the_machine_does_not_have_is_refused() -> None:
    with pytest.raises(OSError) as raised:
        move_thread({4095})
    assert raised.value.errno == 22  # EINVAL, as os.sched_setaffinity
    with pytest.raises(ValueError):  # as os.sched_setaffinity
        move_thread({-1})


def test_a_job_starts_on_its_cpus_and_its_starter_goes_back(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    script = tmp_path / "script.sh"
    script.write_text("cat /proc/self/status\n")
    out = tmp_path / "out"
    before = os.sched_getaffinity(0)
    with out.open("wb") as stdout:
        fd = stdout.fileno()
        child, _ = start_supervisor(script, str(tmp_path), {"PATH": os.defpath}, fd, fd, {cpu})
    assert child.wait(10) == 0
    assert _allowed(out.read_text()) == {cpu}
    recorded = sv.read_exit(tmp_path)
    assert recorded is not None and recorded.code == 0
    assert os.sched_getaffinity(0) == before


def test_a_compiled_supervisor_that_pins_itself_starts_the_job_on_its_cpus_and_no_thread_moves(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = max(os.sched_getaffinity(0))
    script = tmp_path / "script.sh"
    script.write_text(f'cat /proc/self/status\necho "told: ${{{sv.CPUS}-none}}"\n')
    out = tmp_path / "out"
    moves: list[set[int]] = []
    monkeypatch.setattr("conductor_executor.process.move_thread", moves.append)
    with out.open("wb") as stdout:
        fd = stdout.fileno()
        child, _ = start_supervisor(
            script, str(tmp_path), {"PATH": os.defpath}, fd, fd, {cpu}, built_supervisor, pins=True
        )
    assert child.wait(10) == 0
    assert _allowed(out.read_text()) == {cpu}
    assert "told: none" in out.read_text()  # the supervisor's variable, not the job's
    assert moves == []


def test_whether_a_compiled_supervisor_pins_itself_is_checked(built_supervisor: Path, tmp_path: Path) -> None:
    assert compiled.pins(built_supervisor)
    # One built before it did (an image's, named by path): its source without the move.
    source = compiled.SOURCE.read_text()
    start, end = source.index("    const char *cpus = getenv("), source.index("    /* Inherited as ignored")
    older = tmp_path / "older.c"
    older.write_text(source[:start] + source[end:])
    cc = compiled.compiler()
    assert cc is not None
    subprocess.run([cc, "-O2", "-o", str(tmp_path / "older"), str(older)], check=True)
    assert not compiled.pins(tmp_path / "older")
    assert not compiled.pins(tmp_path / "missing")


def test_the_check_holds_in_a_temporary_folder_named_with_spaces_and_quotes(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "a b'$c"
    odd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(odd))
    assert compiled.pins(built_supervisor)
