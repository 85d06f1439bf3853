"""Attendance as the node records it from real joins, drops, rejoins and the meeting's end."""

from __future__ import annotations

from server.app import DATABASE
from server.attendance import attendance_report
from tests.support.peer import Peer


async def report(node, room: str):  # type: ignore[no-untyped-def]
    async with node.app[DATABASE].session() as db:
        return await attendance_report(db, room)


async def test_a_dropped_link_that_comes_back_is_one_stay(node) -> None:  # type: ignore[no-untyped-def]
    host_token = await node.invite("diem-danh", "host")
    member_token = await node.invite("diem-danh")
    host, member = Peer(node.url, "Chủ trì"), Peer(node.url, "UBND xã Nam")
    again = Peer(node.url, "UBND xã Nam")
    try:
        for peer, token in ((host, host_token), (member, member_token)):
            await peer.connect()
            await peer.join("diem-danh", token)
        await member.close()  # the commune's link drops
        await host.wait_event("participant_left")
        await again.connect()
        await again.join("diem-danh", member_token)  # back within the merge window

        rows = {row.name: row for row in (await report(node, "diem-danh")).people}
        assert set(rows) == {"Chủ trì", "UBND xã Nam"}
        commune = rows["UBND xã Nam"]
        assert commune.stays == 1 and commune.reconnects == 1 and commune.still_present
        assert rows["Chủ trì"].role == "host"

        await host._ok("end", {})
        await again.wait_event("meeting_ended")

        async def everyone_out() -> bool:
            return (await report(node, "diem-danh")).still_present == 0

        await host.wait_for(everyone_out, 5, "every stay closed at the end")
        final = {row.name: row for row in (await report(node, "diem-danh")).people}
        assert all(row.last_leave is not None for row in final.values())
    finally:
        for peer in (host, member, again):
            await peer.close()
