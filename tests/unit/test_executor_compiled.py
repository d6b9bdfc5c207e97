"""The compiled supervisor: built once and reused, rebuilt when what is there cannot be trusted, never
required (no compiler: the shell form), and safer than the shell with what a job puts in its folder."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from conductor_executor import compiled, fence_lease
from conductor_executor import supervision as sv
from conductor_executor.process import supervisor_argv
from conductor_executor.settings import ExecutorSettings
from tests.disks import fill, tmpfs
from tests.unit.test_executor_supervision import _supervise


def test_a_build_is_reused_and_one_that_cannot_be_trusted_is_replaced(built_supervisor: Path, tmp_path: Path) -> None:
    folder = tmp_path
    shutil.copy2(built_supervisor, folder)
    first = compiled.build(folder)
    assert first == folder / built_supervisor.name
    inode = first.stat().st_ino
    assert compiled.build(folder) == first and first.stat().st_ino == inode, "built again"

    first.chmod(0o777)  # anyone could make it run something else for every job
    again = compiled.build(folder)
    assert again == first and again.stat().st_ino != inode and not again.stat().st_mode & 0o022

    inode = again.stat().st_ino
    again.write_bytes(b"#!/bin/sh\nexit 0\n")  # damaged: runs, records nothing
    repaired = compiled.build(folder)
    assert repaired == again and repaired.stat().st_ino != inode
    assert compiled.check(repaired) is None
    assert [p.name for p in folder.iterdir()] == [repaired.name], "a temporary file was left"


def test_without_a_compiler_jobs_go_through_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert compiled.compiler() is None
    with caplog.at_level(logging.WARNING, "conductor.executor"):
        assert compiled.resolve(compiled.AUTO, tmp_path / "state") is None
    assert "shell supervisor" in caplog.text
    assert compiled.resolve(compiled.SHELL, tmp_path / "state") is None


def test_an_unwritable_cache_builds_in_the_state_folder(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    built = compiled.resolve(compiled.AUTO, tmp_path / "state")
    assert built is not None and built.parent == tmp_path / "state" / "bin"


def test_without_a_static_libc_it_is_linked_dynamically_with_every_symbol_bound_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_supervisor: Path
) -> None:
    """Its job's process is vforked and borrows its memory until exec: a symbol bound lazily would be
    bound by that child. A compiler that cannot link statically (a libc without a static form)."""
    real = compiled.compiler()
    readelf = shutil.which("readelf")
    if real is None or readelf is None:
        pytest.skip("no compiler or no readelf here")
    wrapper = tmp_path / "cc-without-static"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -static ] && exit 1; done\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    (folder := tmp_path / "bin").mkdir(mode=0o700)
    built = compiled.build(folder)
    assert built is not None and compiled.check(built) is None
    dynamic = subprocess.run([readelf, "-d", str(built)], capture_output=True, text=True, check=True).stdout
    assert "NEEDED" in dynamic and "BIND_NOW" in dynamic


def test_the_setting_takes_auto_shell_or_a_supervisor_that_passes_its_check(built_supervisor: Path) -> None:
    assert ExecutorSettings(job_supervisor=str(built_supervisor)).job_supervisor == str(built_supervisor)
    assert ExecutorSettings(job_supervisor="shell").job_supervisor == "shell"
    for wrong in ("conductor-job", "/nonexistent/conductor-job", "/bin/true", "/bin/sh"):
        with pytest.raises(ValidationError, match="job_supervisor"):
            ExecutorSettings(job_supervisor=wrong)


def test_a_fifo_or_a_link_the_job_puts_at_its_status_is_neither_waited_on_nor_followed(
    tmp_path: Path, built_supervisor: Path
) -> None:
    # The shell form would block for ever opening the FIFO to append the exit, and write through the link.
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    for folder, replace in (
        (tmp_path / "fifo", "rm status; mkfifo status\n"),
        (tmp_path / "link", f"rm status; ln -s {outside} status\n"),
    ):
        supervisor = _supervise(folder, f"until [ -s status ]; do sleep 0.01; done\n{replace}", form=built_supervisor)
        assert supervisor.wait(10) == 0
        assert sv.read_exit(folder) is None
    assert outside.read_text() == "untouched\n"


def test_a_job_keeps_the_signals_it_would_have_in_a_terminal(tmp_path: Path, built_supervisor: Path) -> None:
    # The shell form starts the job in the background of a shell without job control, which ignores
    # SIGINT and SIGQUIT in it; the compiled one leaves every signal as the executor had it. The tests
    # may run where both are ignored (`nohup pytest &`): the executor's are set to their defaults here.
    before = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        # exec: the job's group is then sleep alone. A SIGINT that reached a bash forking its next
        # command could land in the child before it restored its handlers, and be lost (a test failed
        # so, under load, waiting out its 10 s).
        script = "grep SigIgn /proc/self/status > ignored; exec sleep 300\n"
        supervisor = _supervise(tmp_path, script, form=built_supervisor)
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGQUIT, before[1])
    try:
        while not (tmp_path / "ignored").is_file() or not (tmp_path / "ignored").read_text().endswith("\n"):
            time.sleep(0.01)
        ignored = int((tmp_path / "ignored").read_text().split()[1], 16)
        assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGQUIT - 1))
        pgid = sv.read_pgid(tmp_path)
        assert pgid is not None
        while Path(f"/proc/{pgid}/comm").read_text().strip() != "sleep":
            time.sleep(0.01)
        os.killpg(pgid, signal.SIGINT)
        assert supervisor.wait(10) == 0
        ended = sv.read_exit(tmp_path)
        assert ended is not None and ended.code == 128 + signal.SIGINT
    finally:
        supervisor.kill()
        supervisor.wait()


def test_a_disk_with_no_room_for_the_jobs_exit_does_not_get_the_job(tmp_path: Path, built_supervisor: Path) -> None:
    # The job ran to its end, its exit could not be recorded: NODE_FAIL, and a requeue job ran again.
    # The record's room is taken first; where there is none, the job is not started (and is requeued).
    with tmpfs(tmp_path / "disk", "64k") as disk:
        script = disk / "script.sh"
        script.write_text(f"touch {tmp_path}/ran\n")
        ballast = fill(disk)
        with open(tmp_path / "err", "wb") as err:
            done = subprocess.run(
                [sv.ARGV0, str(script)], executable=built_supervisor, stderr=err, timeout=10, cwd=tmp_path
            )
        assert done.returncode == 2 and "no room to record" in (tmp_path / "err").read_text()
        assert not (tmp_path / "ran").exists() and sv.read_exit(disk) is None
        ballast.unlink()  # room again: the exit is recorded
        assert subprocess.run([sv.ARGV0, str(script)], executable=built_supervisor, timeout=10).returncode == 0
        ended = sv.read_exit(disk)
        assert (tmp_path / "ran").exists() and ended is not None and ended.code == 0


def test_it_refuses_what_it_cannot_supervise(built_supervisor: Path) -> None:
    for argv in (["conductor-job"], ["conductor-job", "script.sh"], ["conductor-job", "a", "b"]):
        done = subprocess.run(argv, executable=built_supervisor, capture_output=True, timeout=10)
        assert done.returncode == 2 and done.stderr


@pytest.mark.parametrize("who", ["others can write it", "another user owns it", "others can write above it"])
def test_a_folder_someone_else_could_write_is_never_built_in(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    # Every job runs through the binary there: whoever can write the folder could swap it, later too.
    shared = tmp_path / "shared"
    shared.mkdir()
    if who == "others can write it":
        (shared / "scns-conductor").mkdir(mode=0o700)
        (shared / "scns-conductor").chmod(0o777)
    elif who == "another user owns it":
        (shared / "scns-conductor").mkdir(mode=0o700)
        os.chown(shared / "scns-conductor", 65534, 65534)
    else:
        shared.chmod(0o777)  # not sticky: anyone may rename our folder away and put theirs
    with pytest.raises(PermissionError):
        compiled.build(shared / "scns-conductor")
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    built = compiled.resolve(compiled.AUTO, tmp_path / "state")
    assert built is not None and built.parent == tmp_path / "state" / "bin"


def test_a_sticky_shared_folder_above_is_fine(built_supervisor: Path, tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: nobody can rename what is ours
    built = compiled.build(shared / "scns-conductor")
    assert built is not None and built.parent == shared / "scns-conductor"
    assert not (shared / "scns-conductor").stat().st_mode & 0o077


def test_the_path_is_absolute_wherever_the_executor_runs_from(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs start in their own working folders: a relative path would be looked up from there.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")  # ignored, as XDG says of a relative one
    assert compiled.cache_folder() == Path.home() / ".cache" / "scns-conductor"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    built = compiled.resolve(compiled.AUTO, Path("var/executor"))
    assert built is not None and built.is_absolute() and built.parent == tmp_path / "var/executor/bin"


def test_a_stop_ends_a_build_at_once_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    stuck = tmp_path / "cc"
    stuck.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >> {pids}\nsleep 300\n")
    stuck.chmod(0o755)
    monkeypatch.setenv("CC", str(stuck))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    began = time.monotonic()
    with pytest.raises(compiled.Cancelled):
        compiled.build(tmp_path / "bin", cancel)
    assert time.monotonic() - began < 5
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the compiler's child outlived the build"
        time.sleep(0.05)
    assert [p.name for p in (tmp_path / "bin").iterdir()] == []


def test_a_supervisor_that_writes_garbage_fails_its_check_without_a_crash(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.write_text('#!/bin/sh\nprintf "\\377\\376 pgid\\n" > "${1%/*}/status"\n')
    fake.chmod(0o755)
    wrong = compiled.check(fake)
    assert wrong is not None and "no exit" in wrong


def test_a_missing_cache_folder_is_made_but_not_a_missing_home(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    built = compiled.resolve(compiled.AUTO, tmp_path / "state")
    assert built is not None and built.parent == home / ".cache" / "scns-conductor"
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    built = compiled.resolve(compiled.AUTO, tmp_path / "state")
    assert built is not None and built.parent == tmp_path / "state" / "bin"
    assert not (tmp_path / "no-such-home").exists()


def test_nothing_is_made_in_a_folder_that_is_not_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(compiled, "_only_mine", lambda gid: True)  # others' write is never mended by it
    with pytest.raises(PermissionError, match="CONDUCTOR_JOB_SUPERVISOR"):
        compiled.build(shared / "scns-conductor")
    assert not (shared / "scns-conductor").exists()


@pytest.mark.parametrize("only_mine", [True, False])
def test_a_group_writable_folder_is_private_when_its_group_is_this_users_alone(
    built_supervisor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, only_mine: bool
) -> None:
    # umask 002 (a user private group, as Debian and Ubuntu give): ~/.cache is group-writable.
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o775)
    shutil.copy2(built_supervisor, tmp_path)
    asked: list[int] = []

    def only_mine_here(gid: int) -> bool:
        asked.append(gid)
        return only_mine

    monkeypatch.setattr(compiled, "_only_mine", only_mine_here)
    if only_mine:
        assert compiled.build(cache / "scns-conductor") is not None
    else:
        with pytest.raises(PermissionError):
            compiled.build(cache / "scns-conductor")
    assert asked and set(asked) == {cache.stat().st_gid}


def _group(gid: int, members: list[str]) -> grp.struct_group:
    return grp.struct_group(("g", "x", gid, members))


def _user(name: str, uid: int, gid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/sh"))


@pytest.mark.parametrize(
    ("members", "users", "mine"),
    [
        ([], [("me", "own")], True),  # its primary group, nobody else's
        (["me"], [], True),  # listed as its only member
        (["me"], [("me", "own")], True),
        ([], [("me", "own"), ("other", "own")], False),  # another user's primary group too
        (["me", "other"], [("me", "own")], False),
        (["other"], [], False),
        ([], [], False),  # no member at all: a setgid program's group
    ],
)
def test_a_group_is_only_mine_by_debians_rule(
    monkeypatch: pytest.MonkeyPatch, members: list[str], users: list[tuple[str, str]], mine: bool
) -> None:
    me, gid = os.geteuid(), 4242
    monkeypatch.setattr(grp, "getgrgid", lambda g: _group(g, members))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: _user("me", uid, gid))
    table = [_user(name, me if name == "me" else me + 1, gid) for name, _ in users]
    table.append(_user("elsewhere", me + 2, gid + 1))
    assert compiled._only_mine(gid, lambda: table) is mine


def test_an_unknown_group_is_not_only_mine(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(gid: int) -> grp.struct_group:
        raise KeyError(gid)

    monkeypatch.setattr(grp, "getgrgid", unknown)
    assert not compiled._only_mine(4242, list)


def test_a_build_left_half_done_by_a_killed_executor_is_swept(built_supervisor: Path, tmp_path: Path) -> None:
    shutil.copy2(built_supervisor, tmp_path)
    old, recent = tmp_path / ".conductor-job.old", tmp_path / ".conductor-job.recent"
    old.write_bytes(b"half")
    recent.write_bytes(b"building now")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert compiled.build(tmp_path) == tmp_path / built_supervisor.name
    assert not old.exists() and recent.exists()


@pytest.mark.parametrize("requeue", [True, False])
def test_a_requeue_jobs_shell_dies_with_its_supervisor(tmp_path: Path, built_supervisor: Path, requeue: bool) -> None:
    """A requeue job's fence is its supervisor: killed with the executor gone too, the job ran on
    beside its requeued run (review of 2026-12-02: 22 s of two runs at once)."""
    script = tmp_path / "script.sh"
    script.write_text("echo $$ > shell; while :; do sleep 0.1; done\n")
    lease = tmp_path / "lease"
    lease.touch()
    fence = {fence_lease.LEASE_ENV: str(lease), fence_lease.AFTER_ENV: "600"} if requeue else {}
    argv, program = supervisor_argv(script, built_supervisor)
    supervisor = subprocess.Popen(
        argv, executable=program, env=os.environ | fence, cwd=tmp_path, start_new_session=True, stdin=subprocess.DEVNULL
    )
    shell = None
    try:
        while not (tmp_path / "shell").is_file() or not (tmp_path / "shell").read_text().endswith("\n"):
            time.sleep(0.01)
        shell = int((tmp_path / "shell").read_text())
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 10
        while _running(shell) and requeue and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _running(shell) is not requeue
    finally:
        supervisor.kill()
        supervisor.wait()
        if shell is not None:  # the job's group is its shell's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell, signal.SIGKILL)


def test_the_job_gets_none_of_its_supervisors_own_variables(tmp_path: Path, built_supervisor: Path) -> None:
    """The lease, its silence and the CPUs to move to are the supervisor's: taken out of its
    environment before the job's process is made (it borrows the supervisor's memory until exec)."""
    script = tmp_path / "script.sh"
    script.write_text('env > seen\necho "pwd $PWD" >> seen\nexit 7\n')
    lease = tmp_path / "lease"
    lease.touch()
    ours = {fence_lease.LEASE_ENV: str(lease), fence_lease.AFTER_ENV: "600", sv.CPUS: "0", "KEPT": "x\ty"}
    argv, program = supervisor_argv(script, built_supervisor)
    supervisor = subprocess.run(
        argv, executable=program, env=os.environ | ours, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=30
    )
    assert supervisor.returncode == 0
    seen = (tmp_path / "seen").read_text().splitlines()
    names = {line.partition("=")[0] for line in seen}
    assert not names & {fence_lease.LEASE_ENV, fence_lease.AFTER_ENV, sv.CPUS}
    assert "KEPT=x\ty" in seen and f"pwd {tmp_path}" in seen
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 7


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
