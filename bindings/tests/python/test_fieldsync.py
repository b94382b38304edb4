"""The generated Python bindings against a real fieldsync-server process.

Each test starts its own server (a fresh data folder), enrolls phones with one-time codes the
way an admin issues them, and drives the phones only through the generated `fieldsync` module.
`sync` and `enroll` are awaited, as an app awaits them.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import fieldsync
from conftest import Progress, User, copy_data

FV = fieldsync.FieldValue
Err = fieldsync.FieldSyncError

LI4 = User("li4", "李四", "village", ["village:3"])
CHEN7 = User("chen7", "陈七", "village", ["village:3", "village:4"])
ZHANG3 = User("zhang3", "张三", "volunteer", ["team:7"])
WANG5 = User("wang5", "王五", "volunteer", ["team:7"])
ZHAO6 = User("zhao6", "赵六", "volunteer", ["team:8"])
OFFICE = User("ma8", "马八", "office", [])


def day(hour: int, minute: int = 0) -> str:
    return f"2026-11-28T{hour:02}:{minute:02}:00+08:00"


async def enroll(store: fieldsync.FieldStore, cluster, user: User) -> fieldsync.Enrollment:
    s = cluster.server
    return await store.enroll(s.address, s.fingerprint, cluster.codes[user.id])


async def sync(store: fieldsync.FieldStore) -> fieldsync.SyncReport:
    """One round with a progress listener whose reports are checked for sanity."""
    progress = Progress()
    pending = store.pending_count()
    report = await store.sync(progress)
    progress.assert_sane(report, pending)
    return report


def survey(village: str = "大坪村", **fields) -> dict[str, fieldsync.FieldValue]:
    return {"village": FV.TEXT(village), **fields}


def ids(records) -> set[str]:
    return {r.id for r in records}


async def test_two_phones_record_offline_sync_and_see_what_their_scopes_allow(
    make_server, open_store
):
    cluster = make_server(LI4, CHEN7, ZHANG3)
    li4, chen7, zhang3 = open_store("li4"), open_store("chen7"), open_store("zhang3")
    info = await enroll(li4, cluster, LI4)
    assert (info.user_id, info.user_name, info.role) == ("li4", "李四", fieldsync.Role.VILLAGE)
    assert info.device_id == li4.device_id()
    assert li4.enrollment() == info
    await enroll(chen7, cluster, CHEN7)
    await enroll(zhang3, cluster, ZHANG3)

    # The signal goes: everything below is recorded with no server at all.
    cluster.server.stop()
    survey3 = li4.create("village_survey", "village:3", survey(licensed_doctors=FV.INTEGER(2)))
    visit_li4 = li4.create(
        "village_visit",
        "village:3",
        {
            "village": FV.TEXT("大坪村"),
            "household": FV.TEXT("李家"),
            "visited_at": FV.TEXT(day(9)),
            "visitors": FV.TEXT_LIST(["李四", "陈七"]),
            "needs": FV.TEXT("屋顶漏水"),
        },
    )
    visit_chen7 = chen7.create(
        "village_visit",
        "village:3",
        {"village": FV.TEXT("大坪村"), "household": FV.TEXT("王家"), "visited_at": FV.TEXT(day(10))},
    )
    survey4 = chen7.create("village_survey", "village:4", survey("石桥村", bus_service=FV.BOOL(True)))
    check_in = zhang3.check_in("清洁家园", "幸福社区", day(8), day(10, 30), lat=28.2, lon=112.9)
    assert (li4.pending_count(), chen7.pending_count(), zhang3.pending_count()) == (2, 2, 1)

    # A sync while offline fails as a network error once its deadline has passed (it keeps
    # trying to reconnect until then), changes nothing, and never blocks the caller's event
    # loop (an app's UI thread) while it waits.
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(Err.Network) as offline:
        await li4.sync(deadline_seconds=3)
    waited = time.monotonic() - started
    tick_task.cancel()
    assert str(offline.value), "the error carries a message"
    assert ticks >= (waited / 0.05) * 0.5, f"event loop starved: {ticks} ticks in {waited:.1f}s"
    assert li4.pending_count() == 2

    # The signal is back.
    cluster.server.start()
    first = await sync(li4)
    assert (first.sent, first.received, first.refused) == (2, 0, [])
    # Two phones syncing at once from one event loop.
    r_chen7, r_zhang3 = await asyncio.gather(sync(chen7), sync(zhang3))
    assert (r_chen7.sent, r_chen7.received, r_chen7.refused) == (2, 2, [])
    assert (r_zhang3.sent, r_zhang3.received, r_zhang3.refused) == (1, 0, [])
    second = await sync(li4)
    assert (second.sent, second.received) == (0, 1)
    assert [s.pending_count() for s in (li4, chen7, zhang3)] == [0, 0, 0]

    # li4 (village:3) sees both village:3 visits and its survey, not chen7's village:4 survey.
    assert ids(li4.list()) == {survey3.id, visit_li4.id, visit_chen7.id}
    # chen7 (village:3 and village:4) sees all four village records.
    assert ids(chen7.list()) == {survey3.id, visit_li4.id, visit_chen7.id, survey4.id}
    assert ids(chen7.list(kind="village_survey")) == {survey3.id, survey4.id}
    assert ids(chen7.list(scope="village:4")) == {survey4.id}
    # The volunteer sees only check-ins of team:7.
    assert ids(zhang3.list()) == {check_in}
    # What arrived is what was recorded, value for value.
    got = chen7.get(visit_li4.id)
    assert got == visit_li4
    assert got.fields["visitors"] == FV.TEXT_LIST(["李四", "陈七"])
    assert chen7.get(survey3.id).fields["licensed_doctors"] == FV.INTEGER(2)
    assert li4.get(survey4.id) is None
    mine = zhang3.get(check_in)
    assert mine.fields["hours"] == FV.NUMBER(2.5)
    assert mine.fields["volunteer_id"] == FV.TEXT("zhang3")
    assert mine.fields["status"] == FV.TEXT("submitted")


async def test_concurrent_edits_of_one_survey_field_show_a_conflict_until_resolved(
    make_server, open_store
):
    cluster = make_server(LI4, CHEN7)
    li4, chen7 = open_store("li4"), open_store("chen7")
    await enroll(li4, cluster, LI4)
    await enroll(chen7, cluster, CHEN7)
    record = li4.create("village_survey", "village:3", survey(licensed_doctors=FV.INTEGER(1)))
    await sync(li4)
    await sync(chen7)
    assert chen7.get(record.id) == record

    # Apart, both set licensed_doctors; each also sets a field the other does not touch.
    li4.update(record.id, {"licensed_doctors": FV.INTEGER(2), "bus_service": FV.BOOL(True)})
    chen7.update(record.id, {"licensed_doctors": FV.INTEGER(3), "note": FV.TEXT("卫生室新建")})
    await sync(li4)
    await sync(chen7)
    await sync(li4)

    a, b = li4.get(record.id), chen7.get(record.id)
    assert a == b, "both phones converge on the same record"
    assert set(a.conflicts) == {"licensed_doctors"}
    values = sorted(v.value for v in a.conflicts["licensed_doctors"])
    assert values == [2, 3]
    assert a.fields["licensed_doctors"] in (FV.INTEGER(2), FV.INTEGER(3))
    assert a.fields["bus_service"] == FV.BOOL(True)
    assert a.fields["note"] == FV.TEXT("卫生室新建")
    history = li4.history(record.id)
    assert len(history) == 3, "the creation and one edit from each phone"
    assert {h.device_id for h in history} == {li4.device_id(), chen7.device_id()}
    assert all("licensed_doctors" in h.fields for h in history)

    # Setting the field again resolves the conflict, on both phones after a sync.
    resolved = li4.update(record.id, {"licensed_doctors": FV.INTEGER(3)})
    assert resolved.conflicts == {}
    await sync(li4)
    await sync(chen7)
    assert chen7.get(record.id).conflicts == {}
    assert chen7.get(record.id).fields["licensed_doctors"] == FV.INTEGER(3)


async def test_check_ins_reviews_and_my_hours(make_server, open_store):
    cluster = make_server(ZHANG3, WANG5, ZHAO6, OFFICE)
    zhang3, wang5, zhao6, office = (open_store(n) for n in ("zhang3", "wang5", "zhao6", "office"))
    for store, user in ((zhang3, ZHANG3), (wang5, WANG5), (zhao6, ZHAO6), (office, OFFICE)):
        await enroll(store, cluster, user)

    two_hours = zhang3.check_in("清洁家园", "幸福社区", day(8), day(10), note="带了扫帚")
    ninety_min = zhang3.check_in("文明城市创建", "人民路", day(13), day(14, 30))
    still_open = zhang3.check_in("双报到双服务", "社区服务中心", day(16))
    wang5_ci = wang5.check_in("清洁家园", "幸福社区", day(8), day(11))
    zhao6_ci = zhao6.check_in("社区网格化", "东区", day(9), day(10))
    hours = zhang3.my_hours()
    assert (hours.submitted_hours, hours.confirmed_hours, hours.open) == (3.5, 0.0, 1)
    assert (hours.submitted, hours.confirmed, hours.rejected) == (2, 0, 0)

    assert [(await sync(s)).sent for s in (zhang3, wang5, zhao6)] == [3, 1, 1]
    await sync(zhang3)
    # Same team sees each other's check-ins; team:8 is not visible to team:7 and vice versa.
    assert ids(zhang3.list(kind="check_in")) == {two_hours, ninety_min, still_open, wang5_ci}
    assert ids(zhao6.list()) == {zhao6_ci}
    # Another volunteer's check-in does not count in my hours.
    assert zhang3.my_hours().submitted_hours == 3.5

    # The office reads everything and reviews.
    report = await sync(office)
    assert report.received == 5
    office.update(
        two_hours,
        {
            "status": FV.TEXT("confirmed"),
            "reviewed_by": FV.TEXT("马八"),
            "review_note": FV.TEXT("已核实"),
        },
    )
    office.update(ninety_min, {"status": FV.TEXT("rejected"), "review_note": FV.TEXT("地点不符")})
    assert (await sync(office)).sent == 2
    await sync(zhang3)
    # Checking out of the open one, then the hours.
    zhang3.update(still_open, {"ended_at": FV.TEXT(day(17, 15))})
    assert (await sync(zhang3)).sent == 1
    hours = zhang3.my_hours()
    assert (hours.confirmed_hours, hours.submitted_hours, hours.rejected_hours) == (2.0, 1.25, 1.5)
    assert (hours.confirmed, hours.submitted, hours.rejected, hours.open) == (1, 1, 1, 0)
    assert zhang3.get(two_hours).fields["review_note"] == FV.TEXT("已核实")


async def test_the_phone_refuses_what_the_role_may_not_write_and_says_why(make_server, open_store):
    cluster = make_server(ZHANG3)
    zhang3 = open_store("zhang3")
    await enroll(zhang3, cluster, ZHANG3)
    ok = zhang3.check_in("清洁家园", "幸福社区", day(8), day(9))
    # The rules the server applies, checked on the phone before anything is stored, with the
    # server's reasons: no waiting for a sync to learn it.
    with pytest.raises(Err.Refused, match="a volunteer may not write village_survey records"):
        zhang3.create("village_survey", "village:3", survey())
    with pytest.raises(Err.Refused, match="a volunteer may not set `status`"):
        zhang3.update(ok, {"status": FV.TEXT("confirmed")})
    with pytest.raises(Err.Refused, match="may not write scope `team:8`"):
        zhang3.check_in("清洁家园", "幸福社区", day(10), day(11), scope="team:8")
    assert ids(zhang3.list()) == {ok}
    assert zhang3.get(ok).fields["status"] == FV.TEXT("submitted")
    assert zhang3.pending_count() == 1
    report = await sync(zhang3)
    assert (report.sent, report.refused) == (1, [])


async def test_a_record_refused_after_the_rules_changed_is_reverted_or_dropped(
    make_server, open_store
):
    two_teams = User("zhang3", "张三", "volunteer", ["team:7", "team:8"])
    cluster = make_server(two_teams)
    phone = open_store("zhang3")
    await enroll(phone, cluster, two_teams)
    edited = phone.check_in("清洁家园", "幸福社区", day(8), day(9), scope="team:8")
    assert (await sync(phone)).sent == 1
    server_version = phone.get(edited)

    # The admin takes team:8 away; the phone, out in the field, still has the old rules.
    server = cluster.server
    server.stop()
    server.enroll(User("zhang3", "张三", "volunteer", ["team:7"]), replace=True)
    server.start()
    phone.update(edited, {"note": FV.TEXT("补签")})
    fresh = phone.check_in("社区网格化", "东区", day(10), day(11), scope="team:8")
    report = await sync(phone)
    assert report.sent == 0
    assert {r.id for r in report.refused} == {edited, fresh}
    assert all("team:8" in r.reason for r in report.refused), report.refused

    # Only a refused record can be reverted: an unsynced one says so and stays.
    waiting = phone.check_in("清洁家园", "幸福社区", day(12), day(13))
    with pytest.raises(Err.InvalidInput, match="waiting to be synced"):
        phone.revert(waiting)
    reverted = phone.revert(edited)
    assert reverted.is_to_server(), reverted
    assert reverted.record == server_version
    assert phone.get(edited) == server_version
    assert phone.revert(fresh).is_dropped()
    assert phone.get(fresh) is None
    with pytest.raises(Err.NotFound):
        phone.revert(fresh)
    assert phone.refused() == []
    assert phone.pending_count() == 1
    report = await sync(phone)
    assert (report.sent, report.refused) == (1, [])
    assert ids(phone.list()) == {edited, waiting}


async def test_bad_input_raises_clear_errors_and_changes_nothing(open_store):
    store = open_store("phone")
    record = store.create("village_survey", "village:3", survey(licensed_doctors=FV.INTEGER(2)))
    before = (store.pending_count(), store.list(), store.history(record.id))

    with pytest.raises(Err.InvalidInput, match="unknown kind `parade`"):
        store.create("parade", "village:3", survey())
    with pytest.raises(Err.InvalidInput, match="licensed_doctors"):
        store.create("village_survey", "village:3", survey(licensed_doctors=FV.TEXT("two")))
    with pytest.raises(Err.InvalidInput, match="colour"):
        store.create("village_survey", "village:3", survey(colour=FV.TEXT("red")))
    with pytest.raises(Err.InvalidInput, match="village"):
        store.create("village_survey", "team:3", survey())
    with pytest.raises(Err.InvalidInput, match="required"):
        store.create("village_survey", "village:3", {})
    with pytest.raises(Err.InvalidInput, match="RFC 3339"):
        store.create(
            "village_visit",
            "village:3",
            {"village": FV.TEXT("x"), "household": FV.TEXT("y"), "visited_at": FV.TEXT("昨天")},
        )
    with pytest.raises(Err.InvalidInput, match="licensed_doctors"):
        store.update(record.id, {"licensed_doctors": FV.BOOL(True), "note": FV.TEXT("x")})
    with pytest.raises(Err.InvalidInput, match="derived"):
        store.create(
            "check_in",
            "team:7",
            {
                "volunteer_id": FV.TEXT("u"),
                "activity": FV.TEXT("a"),
                "place": FV.TEXT("p"),
                "started_at": FV.TEXT(day(8)),
                "status": FV.TEXT("submitted"),
                "hours": FV.NUMBER(8.0),
            },
        )
    with pytest.raises(Err.InvalidInput, match="not a record id"):
        store.get("42")
    with pytest.raises(Err.NotFound):
        store.update("0190f0c4-0000-7000-8000-000000000000", {"note": FV.TEXT("x")})
    # Nothing of the refused writes exists, not even in part.
    assert (store.pending_count(), store.list(), store.history(record.id)) == before
    assert "note" not in store.get(record.id).fields

    # What needs the enrolled user says so.
    with pytest.raises(Err.NotEnrolled):
        store.check_in("清洁家园", "幸福社区", day(8))
    with pytest.raises(Err.NotEnrolled):
        store.my_hours()
    with pytest.raises(Err.NotEnrolled):
        await store.sync()
    # The store is single-process, single-open.
    with pytest.raises(Err.Storage, match="in use"):
        open_store("phone")
    # Forms: the schema and typed input come from core.
    spec = {f.name: f for f in fieldsync.field_schema("village_survey")}
    assert spec["licensed_doctors"].field_type == fieldsync.FieldType.INTEGER
    assert spec["village"].required
    assert fieldsync.parse_field_value("village_survey", "road_km_hardened", "12.5") == FV.NUMBER(12.5)
    with pytest.raises(Err.InvalidInput):
        fieldsync.parse_field_value("village_survey", "licensed_doctors", "two")


async def test_enrollment_errors(make_server, open_store):
    cluster = make_server(ZHANG3, WANG5)
    s = cluster.server
    phone = open_store("phone")
    with pytest.raises(Err.Refused, match="code"):
        await phone.enroll(s.address, s.fingerprint, "NOTACODE23")
    with pytest.raises(Err.InvalidInput, match="fingerprint"):
        await phone.enroll(s.address, "not-hex", cluster.codes["zhang3"])
    # A server whose certificate is not the pinned one is never talked to, and the phone is
    # told so (not "no signal"): trying again would not help.
    with pytest.raises(Err.Certificate, match="certificate"):
        await phone.enroll(s.address, "00" * 32, cluster.codes["zhang3"])
    assert phone.enrollment() is None
    await phone.enroll(s.address, s.fingerprint, cluster.codes["zhang3"])
    other = open_store("other")
    with pytest.raises(Err.Refused, match="code"):
        await other.enroll(s.address, s.fingerprint, cluster.codes["zhang3"])
    assert other.enrollment() is None


async def test_a_revoked_phone_is_refused_and_keeps_its_records(make_server, open_store):
    cluster = make_server(ZHANG3)
    phone = open_store("lost-phone")
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    assert (await sync(phone)).sent == 1
    recorded = phone.check_in("清洁家园", "幸福社区", day(10), day(11))

    server = cluster.server
    server.stop()
    server.revoke(phone.device_id())
    server.start()
    with pytest.raises(Err.Unauthorized) as refused:
        await phone.sync()
    assert "revoked" in str(refused.value) or "not enrolled" in str(refused.value)
    assert phone.pending_count() == 1
    assert phone.get(recorded) is not None


async def test_a_phone_the_server_does_not_know_is_refused(make_server, open_store, tmp_path):
    cluster = make_server(ZHANG3)
    server = cluster.server
    # A backup of the server taken before the phone enrolled...
    server.stop()
    backup = tmp_path / "backup"
    copy_data(server.data, backup)
    server.start()
    phone = open_store("phone")
    await enroll(phone, cluster, ZHANG3)
    phone.check_in("清洁家园", "幸福社区", day(8), day(9))
    # ...is restored: same certificate and address, but no such device.
    server.stop()
    server.data = backup
    server.start()
    with pytest.raises(Err.Unauthorized):
        await phone.sync()
    assert phone.pending_count() == 1
