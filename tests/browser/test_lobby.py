"""A host and officials through the lobby and the lock, in two or three Chromium pages."""

from __future__ import annotations

from playwright.async_api import Page

from server.app import ROOMS
from tests.support.browser import join_via_ui, wait_for_remote_video


async def knock(page: Page, node, room: str, name: str, role: str = "member") -> None:  # type: ignore[no-untyped-def]
    """Open an invitation link and ask to join; the page stops in the lobby."""
    token = await node.invite(room, role)
    await page.goto(node.invitation_url(room, token), wait_until="domcontentloaded")
    await page.fill("#display-name", name)
    await page.click("#join")
    await page.wait_for_selector("#lobby:not([hidden])")


async def test_the_host_admits_one_and_denies_another(node, new_page) -> None:  # type: ignore[no-untyped-def]
    await node.schedule("phong-cho", lobby=True)
    host, member, stranger = await new_page(), await new_page(), await new_page()
    host_id = await join_via_ui(host, node, "phong-cho", "Chủ trì tỉnh", role="host")
    assert await host.get_attribute("body", "data-role") == "host"

    await knock(member, node, "phong-cho", "UBND xã Đông")
    # The host is told, and the lobby panel lists the name.
    toast = host.locator(".toast-info", has_text="UBND xã Đông")
    await toast.locator("button", has_text="Xem phòng chờ").click()
    assert await host.get_attribute("body", "data-side") == "open"
    entry = host.locator("#lobby-list .lobby-entry", has_text="UBND xã Đông")
    await entry.wait_for()
    assert await member.is_visible("#lobby")
    assert not await member.is_visible("#meeting")

    await entry.locator('[data-action="admit"]').click()
    await member.wait_for_selector('#conn-state[data-state="connected"]')
    member_id = await member.evaluate("() => window.giaoban.client.participantId")
    await wait_for_remote_video(host, member_id)
    await wait_for_remote_video(member, host_id)
    await host.wait_for_selector("#lobby-panel", state="hidden")

    await knock(stranger, node, "phong-cho", "Người lạ", role="guest")
    entry = host.locator("#lobby-list .lobby-entry", has_text="Người lạ")
    await entry.locator('[data-action="deny"]').click()
    # The refused page is back at the check with the reason, in Vietnamese.
    await stranger.wait_for_selector("#join-error:not([hidden])")
    assert "chưa cho bạn vào" in await stranger.inner_text("#join-error")
    assert await stranger.is_visible("#prejoin")
    assert list(node.app[ROOMS].by_name["phong-cho"].participants) == [host_id, member_id]


async def test_a_locked_room_turns_newcomers_away(node, new_page) -> None:  # type: ignore[no-untyped-def]
    host, late = await new_page(), await new_page()
    await join_via_ui(host, node, "khoa-phong", "Chủ trì", role="host")
    await host.click("#toggle-lock")
    await host.wait_for_selector('body[data-locked="true"]')
    assert await host.get_attribute("#toggle-lock", "aria-pressed") == "true"
    assert node.app[ROOMS].by_name["khoa-phong"].locked

    token = await node.invite("khoa-phong")
    await late.goto(node.invitation_url("khoa-phong", token), wait_until="domcontentloaded")
    await late.fill("#display-name", "Đến muộn")
    await late.click("#join")
    await late.wait_for_selector("#join-error:not([hidden])")
    assert "đã khóa" in await late.inner_text("#join-error")

    await host.click("#toggle-lock")
    await host.wait_for_selector('body[data-locked="false"]')
    await late.click("#join")
    await late.wait_for_selector('#conn-state[data-state="connected"]')
