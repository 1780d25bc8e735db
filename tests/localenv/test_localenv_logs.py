"""Service logs stay bounded across restarts: `spawn` rotates a log that grew too large."""

from __future__ import annotations

import sys

from skyfed.localenv.base import _CHILDREN, rotate_log, spawn


def test_rotate_log_moves_only_large_logs(tmp_path):
    log = tmp_path / "svc.log"
    assert rotate_log(log, limit=10) is False  # no log yet
    log.write_bytes(b"x" * 10)
    assert rotate_log(log, limit=10) is False and log.exists()
    log.write_bytes(b"old" * 10)
    (tmp_path / "svc.log.1").write_bytes(b"older")
    assert rotate_log(log, limit=10) is True
    assert not log.exists()
    assert (tmp_path / "svc.log.1").read_bytes() == b"old" * 10  # replaced the older one


def test_spawn_starts_a_fresh_log_when_the_old_one_is_too_large(tmp_path):
    log = tmp_path / "svc.log"
    log.write_bytes(b"y" * (21 * 1024 * 1024))
    pid = spawn([sys.executable, "-c", "print('hello from the service')"], log, cwd=tmp_path)
    _CHILDREN[pid].wait(timeout=30)
    assert (tmp_path / "svc.log.1").stat().st_size == 21 * 1024 * 1024
    text = log.read_text()
    assert "=== skyfed: starting at" in text and "hello from the service" in text
    assert log.stat().st_size < 4096
