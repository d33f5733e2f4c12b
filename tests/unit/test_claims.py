"""Claim holders: host + pid + start token, so that a dead process's claims are recognised at once and a
reused pid is not mistaken for the process that held the claim. Real processes, real /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.core.claims import UNKNOWN_START, holder_is_dead, process_identity, start_token

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_this_process_identity_names_host_pid_and_its_start() -> None:
    host, pid, start, nonce = process_identity().rsplit(":", 3)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert start == start_token(os.getpid()) and len(nonce) == 6
    assert process_identity() != process_identity()  # two runtimes of one process differ
    assert not holder_is_dead(process_identity())
    assert not holder_is_dead(process_identity() + "#3")


@needs_proc
def test_a_living_process_is_alive_and_dead_once_it_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        token = start_token(child.pid)
        assert token is not None and token != UNKNOWN_START
        holder = f"{socket.gethostname()}:{child.pid}:{token}:abcdef"
        assert not holder_is_dead(holder)
        # the same pid with another start: the pid was given to a process started since (reuse)
        boot, ticks = token.split(".")
        assert holder_is_dead(f"{socket.gethostname()}:{child.pid}:{boot}.{int(ticks) - 1}:abcdef")
        assert holder_is_dead(f"{socket.gethostname()}:{child.pid}:otherboot.{ticks}:abcdef")  # before a reboot
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert start_token(child.pid) is None
    assert holder_is_dead(holder)


def test_other_hosts_and_unknown_formats_are_never_declared_dead() -> None:
    assert not holder_is_dead("another-host:1:x.1:abcdef")
    assert not holder_is_dead(f"{socket.gethostname()}:notapid:x.1:abcdef")
    assert not holder_is_dead("A")
    assert not holder_is_dead(f"{socket.gethostname()}:{os.getpid()}:x.1:abcdef")  # this process: alive
