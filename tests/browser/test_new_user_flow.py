"""What a new user does, through the pages only: a host signs in and schedules a meeting that
invites a member; the member signs in, finds it in the list and knocks; the host admits them;
afterwards the host downloads the attendance CSV."""

from __future__ import annotations

import csv
import io
import re

from playwright.async_api import Page

from server.app import ROOMS
from tests.support.browser import sign_in, wait_for_remote_video


async def enter_meeting(page: Page, name: str) -> None:
    """On the meeting page: the camera preview plays, then join."""
    await page.wait_for_function(
        "() => { const v = document.querySelector('#preview'); return v && v.videoWidth > 0; }"
    )
    await page.fill("#display-name", name)
    await page.click("#join")


async def test_schedule_invite_sign_in_admit_and_download_attendance(node, new_page) -> None:  # type: ignore[no-untyped-def]
    await node.account("lan.nguyen", "host")
    await node.account("an.tran", "member")
    host, member = await new_page(), await new_page()

    await sign_in(host, node, "lan.nguyen")
    await host.goto(f"{node.url}/rooms/new", wait_until="domcontentloaded")
    await host.fill("#title", "Giao ban tuần 48")
    await host.fill("#starts_at", "2026-11-27T08:00")
    await host.fill("#duration", "90")
    await host.select_option("#mode", "discussion")
    await host.check("#lobby")
    await host.fill("#members", "an.tran")
    await host.click("#room-form [type=submit]")
    await host.wait_for_url(re.compile(r".*/rooms/[a-z]{3}-[a-z]{4}-[a-z]{3}$"))
    slug = host.url.rsplit("/", 1)[1]

    await host.click("#join")
    await enter_meeting(host, "Chủ trì Lan")
    await host.wait_for_selector('#conn-state[data-state="connected"]')
    host_id = await host.evaluate("() => window.giaoban.client.participantId")

    # The invited member finds the meeting in their own list and joins from there.
    await sign_in(member, node, "an.tran")
    await member.goto(f"{node.url}/rooms", wait_until="domcontentloaded")
    item = member.locator(f'.rooms-item[data-room="{slug}"]')
    assert "Giao ban tuần 48" in await item.inner_text()
    await item.locator(f'a[href="/r/{slug}"]').click()
    await enter_meeting(member, "An Trần")
    await member.wait_for_selector("#lobby:not([hidden])")  # the room's lobby is on

    entry = host.locator("#lobby-list .lobby-entry", has_text="An Trần")
    await entry.locator('[data-action="admit"]').click()
    await member.wait_for_selector('#conn-state[data-state="connected"]')
    member_id = await member.evaluate("() => window.giaoban.client.participantId")
    await wait_for_remote_video(host, member_id)
    await wait_for_remote_video(member, host_id)
    roles = {p.name: p.role for p in node.app[ROOMS].by_name[slug].participants.values()}
    assert roles == {"Chủ trì Lan": "host", "An Trần": "member"}

    # The member leaves; the host's attendance CSV lists both, in Vietnamese, with a BOM.
    await member.click("#leave")
    await host.wait_for_selector(
        f'#participants li[data-participant-id="{member_id}"]', state="detached"
    )
    response = await host.request.get(f"{node.url}/rooms/{slug}/attendance.csv?lang=vi")
    assert response.status == 200
    data = await response.body()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    names = {row[2] for row in rows[1:]}
    assert names == {"Chủ trì Lan", "An Trần"}
    member_row = next(row for row in rows[1:] if row[2] == "An Trần")
    assert member_row[5]  # the member's leave time is recorded
