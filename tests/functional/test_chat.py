"""Chat in a meeting: to the room, privately to the hosts, history, limits.

Real node, real store (SQLite under the test's data directory), real Socket.IO clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from signaling.chat import RATE
from tests.functional.test_admission import code_of, make_peer, signed_in
from tests.support.peer import Peer


@pytest.fixture
async def closing() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        await peer.close()


async def _joined(node, closing: list[Peer], room: str, name: str, role: str = "member") -> Peer:  # type: ignore[no-untyped-def]
    peer = await make_peer(node, name)
    closing.append(peer)
    await peer.join(room, await node.invite(room, role))
    return peer


def _chats(peer: Peer) -> list[dict[str, Any]]:
    return [payload for event, payload in peer.events if event == "chat_message"]


async def _got(peer: Peer, text: str) -> dict[str, Any]:
    return await peer.wait_event("chat_message", lambda m: m["text"] == text)


async def _metrics(node) -> str:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
        return await response.text()


async def test_a_room_message_reaches_everyone(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await _joined(node, closing, "chat-phong", "Chủ trì tỉnh", "host")
    member = await _joined(node, closing, "chat-phong", "UBND xã A")
    other = await _joined(node, closing, "chat-phong", "UBND xã B")

    ack = await member._ok("chat", {"text": "  Xã A đã có mặt.  ", "to": "room"})
    message = ack["message"]
    assert message["id"].startswith("m-")
    assert message["from"] == {
        "participant_id": member.participant_id,
        "name": "UBND xã A",
        "role": "member",
    }
    assert (message["to"], message["text"]) == ("room", "Xã A đã có mặt.")
    assert datetime.fromisoformat(message["sent_at"]).tzinfo is not None
    # Everyone gets the same object, the sender too (the client drops the duplicate by id).
    for peer in (host, member, other):
        assert await _got(peer, "Xã A đã có mặt.") == message

    # `to` defaults to the room; a host writes to the room the same way.
    said = (await host._ok("chat", {"text": "Bắt đầu họp"}))["message"]
    assert said["to"] == "room" and said["from"]["role"] == "host"
    await _got(other, "Bắt đầu họp")
    assert 'giaoban_chat_messages_total{to="room"} 2.0' in await _metrics(node)


async def test_a_private_message_reaches_the_hosts_and_its_sender_only(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await _joined(node, closing, "chat-rieng", "Chủ trì", "host")
    second_host = await _joined(node, closing, "chat-rieng", "Phó chủ trì", "host")
    member = await _joined(node, closing, "chat-rieng", "UBND xã A")
    other = await _joined(node, closing, "chat-rieng", "UBND xã B")

    message = (await member._ok("chat", {"text": "Xin phát biểu", "to": "hosts"}))["message"]
    assert message["to"] == "hosts"
    for peer in (host, second_host, member):
        assert await _got(peer, "Xin phát biểu") == message
    # A host's private note goes to the hosts (it included, once), not to the members.
    await host._ok("chat", {"text": "Cho xã A nói sau", "to": "hosts"})
    await _got(second_host, "Cho xã A nói sau")
    # A later room message reaches `other` and `member` after the private ones would have.
    await host._ok("chat", {"text": "Tiếp tục", "to": "room"})
    await _got(other, "Tiếp tục")
    await _got(member, "Tiếp tục")
    await _got(host, "Tiếp tục")
    assert [m["text"] for m in _chats(other)] == ["Tiếp tục"]
    assert [m["text"] for m in _chats(member)] == ["Xin phát biểu", "Tiếp tục"]
    assert [m["text"] for m in _chats(host)].count("Cho xã A nói sau") == 1
    assert 'giaoban_chat_messages_total{to="hosts"} 2.0' in await _metrics(node)


async def test_history_for_hosts_and_members(node, closing) -> None:  # type: ignore[no-untyped-def]
    room = "chat-lich-su"
    host = await _joined(node, closing, room, "Chủ trì", "host")
    # A signed-in member (its account counts) and one by invitation link only.
    cookie = await signed_in(node, "xa.a")
    account_member = await make_peer(node, "UBND xã A", cookie=cookie)
    closing.append(account_member)
    await account_member.join(room, await node.invite(room))
    link_member = await _joined(node, closing, room, "UBND xã B")

    await host._ok("chat", {"text": "một", "to": "room"})
    await account_member._ok("chat", {"text": "hai (riêng của A)", "to": "hosts"})
    await link_member._ok("chat", {"text": "ba (riêng của B)", "to": "hosts"})
    await link_member._ok("chat", {"text": "bốn", "to": "room"})

    def texts(result: dict[str, Any]) -> list[str]:
        return [m["text"] for m in result["messages"]]

    seen_by_host = await host._ok("chat_history", {})
    assert texts(seen_by_host) == ["một", "hai (riêng của A)", "ba (riêng của B)", "bốn"]
    first = seen_by_host["messages"][0]
    # Stored messages do not keep participant ids (a rejoin gets a new one anyway).
    assert first["from"] == {"participant_id": None, "name": "Chủ trì", "role": "host"}
    assert first["to"] == "room" and first["id"].startswith("m-")
    assert texts(await account_member._ok("chat_history", {})) == [
        "một",
        "hai (riêng của A)",
        "bốn",
    ]
    assert texts(await link_member._ok("chat_history", {})) == ["một", "bốn"]

    # A newcomer sees the room's messages from before it came.
    late = await _joined(node, closing, room, "Đến muộn")
    assert texts(await late._ok("chat_history", {})) == ["một", "bốn"]


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"text": "x" * 1001}, "longer than 1000"),
        ({"text": ""}, "empty"),
        ({"text": "   \n  "}, "empty"),
        ({}, "must be a string"),
        ({"text": 5}, "must be a string"),
        ({"text": ["a"]}, "must be a string"),
        ({"text": None}, "must be a string"),
        ({"text": "chuông\x07"}, "control character"),
        ({"text": "a\x00b"}, "control character"),
        ({"text": "đảo\u202echiều"}, "control character"),
        ({"text": "\n".join("a" * 21)}, "more than 20 lines"),
        ({"text": "ok", "to": "all"}, "'to' must be"),
        ({"text": "ok", "to": None}, "'to' must be"),
        ({"text": "ok", "to": ["room"]}, "'to' must be"),
    ],
)
async def test_bad_messages_are_refused(node, closing, payload, detail) -> None:  # type: ignore[no-untyped-def]
    room = "chat-sai"
    member = await _joined(node, closing, room, "UBND xã A")
    ack = await member.request("chat", payload)
    assert code_of(ack) == "bad_request", ack
    assert detail in ack["error"]["message"]
    assert (await member._ok("chat_history", {}))["messages"] == []


async def test_a_payload_that_is_not_an_object_is_refused(node, closing) -> None:  # type: ignore[no-untyped-def]
    member = await _joined(node, closing, "chat-sai-kieu", "UBND xã A")
    assert code_of(await member.request("chat", "xin chào")) == "bad_request"
    assert code_of(await member.request("chat_history", ["x"])) == "bad_request"


async def test_chat_needs_a_joined_room(node, closing) -> None:  # type: ignore[no-untyped-def]
    outsider = await make_peer(node, "Chưa vào")
    closing.append(outsider)
    assert code_of(await outsider.request("chat", {"text": "xin chào"})) == "not_joined"
    assert code_of(await outsider.request("chat_history", {})) == "not_joined"
    # Waiting in the lobby is not being in the room.
    waiting = await make_peer(node, "Khách")
    closing.append(waiting)
    await waiting.join("chat-cho", await node.invite("chat-cho", "guest"))
    assert code_of(await waiting.request("chat", {"text": "cho vào với"})) == "not_joined"
    assert code_of(await waiting.request("chat_history", {})) == "not_joined"
    # After leaving, too.
    member = await _joined(node, closing, "chat-roi", "UBND xã A")
    await member.leave()
    assert code_of(await member.request("chat", {"text": "còn đây"})) == "not_joined"


async def test_too_many_messages_are_refused(node, closing) -> None:  # type: ignore[no-untyped-def]
    room = "chat-nhanh"
    chatty = await _joined(node, closing, room, "Nói nhiều")
    calm = await _joined(node, closing, room, "Bình tĩnh")
    for n in range(RATE):
        await chatty._ok("chat", {"text": f"tin {n}"})
    ack = await chatty.request("chat", {"text": "thêm nữa"})
    assert code_of(ack) == "rate_limited", ack
    # Only the sender is slowed down; nothing refused was stored.
    await calm._ok("chat", {"text": "tôi vẫn gửi được"})
    history = (await calm._ok("chat_history", {}))["messages"]
    assert [m["text"] for m in history][-2:] == [f"tin {RATE - 1}", "tôi vẫn gửi được"]
    assert "thêm nữa" not in [m["text"] for m in history]
    metrics = await _metrics(node)
    assert 'giaoban_signaling_errors_total{code="rate_limited",event="chat"} 1.0' in metrics


async def test_markup_is_kept_verbatim_as_text(node, closing, caplog) -> None:  # type: ignore[no-untyped-def]
    room = "chat-html"
    host = await _joined(node, closing, room, "Chủ trì", "host")
    member = await _joined(node, closing, room, "<img src=x onerror=alert(1)>")
    texts = [
        "<script>alert('x')</script>",
        '<img src=x onerror="alert(document.cookie)">',
        "&lt;b&gt; & <b>đậm</b>",
    ]
    with caplog.at_level("INFO", logger="signaling.chat"):
        for text in texts:
            sent = (await member._ok("chat", {"text": text, "to": "room"}))["message"]
            assert sent["text"] == text
            got = await _got(host, text)
            assert got["from"]["name"] == "<img src=x onerror=alert(1)>"
    history = (await host._ok("chat_history", {}))["messages"]
    assert [m["text"] for m in history] == texts
    # The log names the room and the participant, never the text.
    lines = [r.getMessage() for r in caplog.records if r.name == "signaling.chat"]
    assert len(lines) == 3
    assert all(f"room={room} participant={member.participant_id}" in line for line in lines)
    assert not any("alert" in line for line in lines)
