"""A host and a member in two Chromium pages: mute by the host, raise hand, give the floor,
end the meeting; each step asserted in the other page and in the node."""

from __future__ import annotations

from server.app import ROOMS
from tests.support.browser import join_via_ui, wait_for_remote_video


def microphone(node, room: str, participant_id: str):  # type: ignore[no-untyped-def]
    tracks = node.app[ROOMS].by_name[room].participants[participant_id].tracks
    return next(t for t in tracks if t.source == "microphone")


async def test_mute_hand_floor_and_end_through_the_pages(node, new_page) -> None:  # type: ignore[no-untyped-def]
    await node.schedule("hoi-nghi-ui", mode="conference")
    host, member = await new_page(), await new_page()
    host_id = await join_via_ui(host, node, "hoi-nghi-ui", "Chủ trì tỉnh", role="host")
    member_id = await join_via_ui(member, node, "hoi-nghi-ui", "UBND xã Tây")
    await wait_for_remote_video(host, member_id)

    # Conference mode: the member's microphone is closed by the node and the page shows it.
    await member.wait_for_selector('#toggle-mic[aria-pressed="true"]')
    assert microphone(node, "hoi-nghi-ui", member_id).muted
    await member.click("#toggle-mic")  # refused: no floor
    await member.wait_for_selector(".toast >> text=Hãy giơ tay")
    assert microphone(node, "hoi-nghi-ui", member_id).muted

    # Raise hand → the host sees it in order and gives the floor.
    await member.click("#raise-hand")
    await member.wait_for_selector('#raise-hand[aria-pressed="true"]')
    hand = host.locator(f'#hands-list [data-participant-id="{member_id}"]')
    await hand.wait_for()
    assert "UBND xã Tây" in await hand.inner_text()
    await hand.locator('[data-action="grant_floor"]').click()
    await member.wait_for_selector('#raise-hand[aria-pressed="false"]')
    granted = member.locator(".toast-info", has_text="cho bạn phát biểu")
    await granted.locator("button", has_text="Bật micrô").click()
    await member.wait_for_selector('#toggle-mic[aria-pressed="false"]')
    await host.wait_for_selector(
        f'#grid .tile[data-participant-id="{member_id}"][data-mic-muted="false"]'
    )
    assert not microphone(node, "hoi-nghi-ui", member_id).muted

    # The host mutes the member from the participant list; the member's page shows it.
    row = host.locator(f'#participants li[data-participant-id="{member_id}"]')
    await row.locator(".p-menu > summary").click()
    await row.locator('[data-action="mute"]').click()
    await member.wait_for_selector('#toggle-mic[aria-pressed="true"]')
    await member.wait_for_selector(".toast-info >> text=tắt micrô của bạn")
    assert microphone(node, "hoi-nghi-ui", member_id).muted

    # End for all: the member's page says the meeting is over.
    host.on("dialog", lambda dialog: dialog.accept())
    await host.click("#end-all")
    await member.wait_for_selector("#left:not([hidden])")
    assert "kết thúc" in await member.inner_text("#left h1")
    await host.wait_for_selector("#left:not([hidden])")
    assert "hoi-nghi-ui" not in node.app[ROOMS].by_name
    assert host_id
