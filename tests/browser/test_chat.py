"""Chat through the meeting page's UI, in two or three Chromium pages: both ways, markup shown
as text, private messages to the hosts."""

from __future__ import annotations

from playwright.async_api import Page

from tests.support.browser import join_via_ui


async def open_chat(page: Page) -> None:
    await page.click("#toggle-chat")
    await page.wait_for_selector("#chat-panel:not([hidden])")
    assert await page.get_attribute("#toggle-chat", "aria-pressed") == "true"


async def say(page: Page, text: str, to: str = "room") -> None:
    """Type `text` in the chat form and send it with Enter; waits until the page shows it."""
    await page.select_option("#chat-to", to)
    await page.fill("#chat-text", text)
    await page.press("#chat-text", "Enter")
    await page.wait_for_function(
        """(text) => [...document.querySelectorAll('#chat-list .chat-text')]
                       .some((p) => p.textContent === text)""",
        arg=text,
    )
    assert await page.input_value("#chat-text") == ""


async def texts(page: Page) -> list[str]:
    return await page.locator("#chat-list .chat-text").all_text_contents()


async def shown(page: Page, text: str) -> None:
    """Wait until the chat list of `page` has a message whose text is exactly `text`."""
    await page.locator("#chat-list .chat-text").filter(has_text=text).first.wait_for()
    assert text in await texts(page)


async def test_a_host_and_a_member_chat_both_ways(node, new_page) -> None:  # type: ignore[no-untyped-def]
    host, member = await new_page(), await new_page()
    await join_via_ui(host, node, "chat-hai-chieu", "Chủ trì tỉnh", role="host")
    await join_via_ui(member, node, "chat-hai-chieu", "UBND xã Đông")

    await open_chat(host)
    assert await host.is_visible("#chat-empty")
    await say(host, "Chào các đồng chí.\nBắt đầu giao ban.")
    # The member's panel is closed: the message waits behind an unread badge.
    await member.wait_for_selector("#chat-badge:not([hidden])")
    assert await member.inner_text("#chat-badge") == "1"
    await open_chat(member)
    await member.wait_for_selector("#chat-badge", state="hidden")
    await shown(member, "Chào các đồng chí.\nBắt đầu giao ban.")
    sender = member.locator("#chat-list .chat-msg").first
    assert await sender.locator(".chat-name").inner_text() == "Chủ trì tỉnh"
    assert await sender.locator(".chat-role").inner_text() == "chủ trì"
    assert await sender.locator(".chat-time").get_attribute("datetime")

    await say(member, "Xã Đông đã sẵn sàng.")
    await shown(host, "Xã Đông đã sẵn sàng.")
    # The sender sees each of its messages once (ack and event carry the same id).
    assert await texts(host) == ["Chào các đồng chí.\nBắt đầu giao ban.", "Xã Đông đã sẵn sàng."]
    assert await texts(member) == await texts(host)
    assert await member.get_attribute('#chat-list .chat-msg[data-mine="true"]', "data-to") == "room"

    # Markup is other people's words: it shows as the characters typed, and runs nothing.
    trap = (
        '<img src=x onerror="window.__chatPwned = 1"><b>đậm</b>'
        "<script>window.__chatPwned = 2</script>"
    )
    await say(member, trap)
    await shown(host, trap)
    for page in (host, member):
        assert await page.locator("#chat-list img, #chat-list b, #chat-list script").count() == 0
        assert await page.evaluate("() => window.__chatPwned") is None

    # Closing the side bar from its own button leaves chat unpressed; the toggle brings it back.
    await host.click("#close-side")
    assert await host.get_attribute("#toggle-chat", "aria-pressed") == "false"
    await say(member, "Hết giờ.")
    await host.wait_for_selector("#chat-badge:not([hidden])")
    await open_chat(host)
    assert await host.get_attribute("body", "data-side") == "open"
    await shown(host, "Hết giờ.")
    assert await host.is_hidden("#chat-badge")


async def test_a_private_message_reaches_the_hosts_only(node, new_page) -> None:  # type: ignore[no-untyped-def]
    room = "chat-rieng-tu"
    host, member, other = await new_page(), await new_page(), await new_page()
    await join_via_ui(host, node, room, "Chủ trì", role="host")
    await join_via_ui(member, node, room, "UBND xã A")
    await join_via_ui(other, node, room, "UBND xã B")
    for page in (host, member, other):
        await open_chat(page)

    await say(member, "Xin được phát biểu trước.", to="hosts")
    await shown(host, "Xin được phát biểu trước.")
    private = host.locator("#chat-list .chat-msg", has_text="Xin được phát biểu trước.")
    assert await private.get_attribute("data-to") == "hosts"
    assert await private.locator(".chat-private").inner_text() == "riêng cho chủ trì"
    mine = member.locator("#chat-list .chat-msg", has_text="Xin được phát biểu trước.")
    assert await mine.locator(".chat-private").is_visible()

    # A room message sent after it reaches the other member; the private one never does.
    await say(host, "Mời xã A phát biểu.")
    await shown(other, "Mời xã A phát biểu.")
    assert await texts(other) == ["Mời xã A phát biểu."]
    assert await other.locator(".chat-private").count() == 0

    # Joining again loads the history: the room's messages, still without the private one.
    await join_via_ui(other, node, room, "UBND xã B")
    await open_chat(other)
    await shown(other, "Mời xã A phát biểu.")
    assert await texts(other) == ["Mời xã A phát biểu."]
    await join_via_ui(host, node, room, "Chủ trì", role="host")
    await open_chat(host)
    await shown(host, "Mời xã A phát biểu.")
    assert await texts(host) == ["Xin được phát biểu trước.", "Mời xã A phát biểu."]
