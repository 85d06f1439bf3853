"""Everyone in the meeting sees that it is being recorded while the host records."""

from __future__ import annotations

from server.app import ROOMS
from tests.support.browser import join_via_ui, wait_for_remote_video


async def test_the_recording_indicator_follows_the_host(node, new_page) -> None:  # type: ignore[no-untyped-def]
    host, member = await new_page(), await new_page()
    await join_via_ui(host, node, "ghi-hinh-ui", "Chủ trì", role="host")
    member_id = await join_via_ui(member, node, "ghi-hinh-ui", "UBND xã Đoài")
    await wait_for_remote_video(host, member_id)
    assert await member.is_hidden("#toggle-recording")  # only hosts record
    assert await member.is_hidden("#rec-indicator")

    await host.click("#toggle-recording")
    await member.wait_for_selector("#rec-indicator:not([hidden])")
    assert "Đang ghi hình" in await member.inner_text("#rec-indicator")
    await host.wait_for_selector('#toggle-recording[aria-pressed="true"]')
    assert node.app[ROOMS].by_name["ghi-hinh-ui"].recorder is not None

    await host.click("#toggle-recording")
    await member.wait_for_selector("#rec-indicator", state="hidden")
    assert node.app[ROOMS].by_name["ghi-hinh-ui"].recorder is None
