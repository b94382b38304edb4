"""Sync as the field sees it, through the generated Python: deadlines on a dead network, the
background sync's states (Idle, Syncing, WaitingToRetry, Failed) against a real server that is
stopped, started, revoking, or replaced by one with another certificate.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import fieldsync
from conftest import Server, User

Err = fieldsync.FieldSyncError
State = fieldsync.SyncState
Failure = fieldsync.SyncFailure

ZHANG3 = User("zhang3", "张三", "volunteer", ["team:7"])
WANG5 = User("wang5", "王五", "volunteer", ["team:7"])


def day(hour: int, minute: int = 0) -> str:
    return f"2026-11-28T{hour:02}:{minute:02}:00+08:00"


async def enroll(store, cluster, user: User) -> fieldsync.Enrollment:
    s = cluster.server
    return await store.enroll(s.address, s.fingerprint, cluster.codes[user.id])


class States(fieldsync.SyncStateListener):
    """Every state a background sync reported (called on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[fieldsync.SyncState] = []

    def on_state(self, state: fieldsync.SyncState) -> None:
        with self._lock:
            self._seen.append(state)

    def seen(self) -> list[fieldsync.SyncState]:
        with self._lock:
            return list(self._seen)

    async def until(self, done, timeout: float = 60.0) -> fieldsync.SyncState:
        """Waits (without blocking the event loop) until the latest state satisfies `done`."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.seen()
            if seen and done(seen[-1]):
                return seen[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no such state within {timeout}s; seen: {seen}")
            await asyncio.sleep(0.02)


def names(states) -> list[str]:
    """The state names in order, repeats of one name collapsed (Syncing reports progress)."""
    out: list[str] = []
    for s in states:
        name = type(s).__name__.rsplit(".", 1)[-1]  # "SyncState.IDLE" -> "IDLE"
        if not out or out[-1] != name:
            out.append(name)
    return out


def idle_after_a_round(s) -> bool:
    return s.is_idle() and s.last is not None


FAST = fieldsync.BackgroundSyncOptions(deadline_seconds=2, first_retry_seconds=1, max_retry_seconds=2)


async def test_a_sync_to_a_stopped_server_fails_as_network_within_its_deadline(make_server, open_store):
    cluster = make_server(ZHANG3, WANG5)
    phone = open_store("phone")
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    cluster.server.stop()

    for deadline in (1, 3):
        started = time.monotonic()
        with pytest.raises(Err.Network, match="gave up|did not finish|timed out"):
            await phone.sync(deadline_seconds=deadline)
        waited = time.monotonic() - started
        # It kept trying until about the deadline, and not much longer.
        assert deadline * 0.5 <= waited <= deadline + 3, f"deadline {deadline}s, waited {waited:.1f}s"
    assert phone.pending_count() == 1

    # Enrolling has the same deadline.
    other = open_store("other")
    started = time.monotonic()
    with pytest.raises(Err.Network):
        await other.enroll(cluster.server.address, cluster.server.fingerprint, cluster.codes["wang5"], deadline_seconds=2)
    assert time.monotonic() - started <= 5
    assert other.enrollment() is None
    with pytest.raises(Err.InvalidInput, match="deadline"):
        await phone.sync(deadline_seconds=0)


async def test_background_sync_pushes_pending_records_and_comes_back_to_idle(make_server, open_store):
    cluster = make_server(ZHANG3)
    phone = open_store("phone")
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    phone.check_in("文明城市创建", "人民路", day(10), day(11))

    states = States()
    sync = fieldsync.BackgroundSync(phone, states)
    first = await states.until(lambda s: s.is_idle())
    assert first.last is None and sync.state() == first, "Idle until asked"
    sync.request_sync()
    done = await states.until(idle_after_a_round)
    assert (done.last.sent, done.last.received, done.last.refused) == (2, 0, [])
    assert done.last.connections == 1
    assert phone.pending_count() == 0
    seen = states.seen()
    assert names(seen) == ["IDLE", "SYNCING", "IDLE"], seen
    syncing = [s.progress for s in seen if s.is_syncing()]
    last = syncing[-1]
    assert (last.sent, last.to_send) == (2, 2), syncing
    # Nothing runs on its own after a success.
    await asyncio.sleep(1)
    assert len(states.seen()) == len(seen)

    # Asked again: one more round, nothing to send.
    sync.request_sync()
    await states.until(lambda s: idle_after_a_round(s) and len(states.seen()) > len(seen))
    assert states.seen()[-1].last.sent == 0
    sync.stop()


async def test_background_sync_waits_out_no_signal_and_syncs_when_it_is_back(make_server, open_store):
    cluster = make_server(ZHANG3)
    phone = open_store("phone")
    await enroll(phone, cluster, ZHANG3)
    cluster.server.stop()
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))

    states = States()
    sync = fieldsync.BackgroundSync(phone, states, FAST)
    sync.request_sync()
    waiting = await states.until(lambda s: s.is_waiting_to_retry())
    assert waiting.reason, "says why"
    assert waiting.at_unix_ms > time.time() * 1000 - 1000, "a retry time to show"
    # The signal is back; nobody asks: the next retry syncs.
    cluster.server.start()
    done = await states.until(idle_after_a_round)
    assert done.last.sent == 1
    assert phone.pending_count() == 0
    assert not any(s.is_failed() for s in states.seen()), "no signal is never Failed"
    assert names(states.seen())[:4] == ["IDLE", "SYNCING", "WAITING_TO_RETRY", "SYNCING"]
    sync.stop()


async def test_background_sync_of_a_revoked_phone_fails_unauthorized_and_stops_trying(make_server, open_store):
    cluster = make_server(ZHANG3)
    phone = open_store("lost-phone")
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    server = cluster.server
    server.stop()
    server.revoke(phone.device_id())
    server.start()

    states = States()
    sync = fieldsync.BackgroundSync(phone, states, FAST)
    sync.request_sync()
    failed = await states.until(lambda s: s.is_failed())
    assert failed.kind == Failure.UNAUTHORIZED
    assert "revoked" in failed.reason or "not enrolled" in failed.reason, failed.reason
    # Not retried: a retry after a second would have shown by now.
    seen = states.seen()
    await asyncio.sleep(3)
    assert states.seen() == seen, "a refused phone was retried"
    assert names(seen) == ["IDLE", "SYNCING", "FAILED"]
    assert phone.pending_count() == 1, "the record waits on the phone"
    sync.stop()


async def test_a_server_with_another_certificate_is_certificate_not_no_signal(make_server, open_store, tmp_path):
    cluster = make_server(ZHANG3)
    s = cluster.server
    phone = open_store("phone")
    with pytest.raises(Err.Certificate):
        await phone.enroll(s.address, "ab" * 32, cluster.codes["zhang3"], deadline_seconds=10)
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))

    # Another server (its own certificate) now answers at the address the phone enrolled with.
    s.stop()
    logs = tmp_path / "impostor-logs"
    logs.mkdir()
    impostor = Server(tmp_path / "impostor", logs)
    impostor.init()
    assert impostor.fingerprint != s.fingerprint
    impostor.port = s.port
    impostor.start()
    try:
        started = time.monotonic()
        with pytest.raises(Err.Certificate, match="certificate"):
            await phone.sync(deadline_seconds=20)
        assert time.monotonic() - started < 10, "a wrong certificate is not retried until the deadline"

        states = States()
        sync = fieldsync.BackgroundSync(phone, states, FAST)
        sync.request_sync()
        failed = await states.until(lambda st: st.is_failed())
        assert failed.kind == Failure.CERTIFICATE
        seen = states.seen()
        await asyncio.sleep(2)
        assert states.seen() == seen, "a wrong certificate was retried"
        sync.stop()
    finally:
        impostor.stop()
    assert phone.pending_count() == 1


async def test_background_sync_options_are_checked(open_store):
    phone = open_store("phone")
    for bad in (
        fieldsync.BackgroundSyncOptions(deadline_seconds=0),
        fieldsync.BackgroundSyncOptions(first_retry_seconds=0),
        fieldsync.BackgroundSyncOptions(first_retry_seconds=60, max_retry_seconds=30),
    ):
        with pytest.raises(Err.InvalidInput):
            fieldsync.BackgroundSync(phone, States(), bad)
    # Not enrolled: Failed with what to do, at once.
    states = States()
    sync = fieldsync.BackgroundSync(phone, states)
    sync.request_sync()
    failed = await states.until(lambda s: s.is_failed(), timeout=10)
    assert failed.kind == Failure.NOT_ENROLLED
    sync.stop()


async def test_too_many_syncs_is_server_trouble_retried_never_a_refusal(make_server, open_store):
    """The server's limit of 120 rounds a minute per phone says "later", not "no": the round
    fails as ServerUnavailable (the retry class), nothing is refused, and the background sync
    waits and tries again on its own instead of stopping as Failed."""
    cluster = make_server(ZHANG3)
    phone = open_store("phone")
    await enroll(phone, cluster, ZHANG3)
    for _ in range(120):
        await phone.sync(deadline_seconds=10)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    with pytest.raises(Err.ServerUnavailable, match="minute"):
        await phone.sync(deadline_seconds=10)
    assert phone.pending_count() == 1
    assert phone.refused() == []

    states = States()
    sync = fieldsync.BackgroundSync(phone, states, FAST)
    sync.request_sync()
    waiting = await states.until(lambda s: s.is_waiting_to_retry())
    assert "minute" in waiting.reason, waiting
    assert not any(s.is_failed() for s in states.seen()), states.seen()
    sync.stop()
