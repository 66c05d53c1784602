"""A child in its own process group, stopped as a whole: `flead up`'s ``dagster dev``.

``dagster dev`` runs a webserver, a daemon and code servers (which start run workers). Signalling only
the ``dagster dev`` process orphans them if it dies first, so the whole group is signalled: SIGTERM,
the grace, then SIGKILL to whatever is left of the group and of the descendants seen at the start.
Because the child leads its own group, a Ctrl-C at the terminal reaches only the parent, which then
stops the group the same way as for a SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class GroupStop:
    pid: int  # the group's leader (and the group id)
    processes: int  # how many processes were signalled (the leader and its descendants)
    outcome: str  # "stopped" (all exited within the grace), "killed" or "not running"


def start_group(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `command` as the leader of a new process group (and session); stdin is /dev/null."""
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_group(popen: subprocess.Popen, grace_s: float) -> GroupStop:
    """SIGTERM to the group, wait up to `grace_s`, then SIGKILL to what is left; reaps the leader."""
    pgid = popen.pid  # a process group id is not reused while a member lives, even after the leader
    members = _members(pgid)
    if not members:
        popen.wait()
        return GroupStop(pgid, 0, "not running")
    _signal_all(pgid, members, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(members, timeout=grace_s)
    outcome = "killed" if alive else "stopped"
    _signal_all(pgid, alive, signal.SIGKILL)  # also members that joined the group during the grace
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ChildProcessError):
        popen.wait(5)
    return GroupStop(pgid, len(members), outcome)


def _members(pgid: int) -> list[psutil.Process]:
    """The live processes of the group and the leader's descendants (which may have left it)."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pgid)
        if leader.status() != psutil.STATUS_ZOMBIE:
            found[pgid] = leader
        for child in leader.children(recursive=True):
            found[child.pid] = child
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(process.pid, process)
    return list(found.values())


def _signal_all(pgid: int, members: list[psutil.Process], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
    for member in members:  # a descendant that started its own group is not reached by killpg
        with contextlib.suppress(psutil.Error):
            member.send_signal(signum)
