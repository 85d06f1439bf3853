"""Host controls and floor control, enforced by the node: what is forwarded, who may do what.

Real node, real aiortc publishers (a tone as the microphone) and a counting subscriber."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.app import ROOMS
from tests.support.media import BarcodeVideoTrack, ToneAudioTrack
from tests.support.peer import Peer


def code_of(ack: Any) -> str:
    assert isinstance(ack, dict) and "error" in ack, f"expected an error ack, got {ack!r}"
    return ack["error"]["code"]


@pytest.fixture
async def people(node):  # type: ignore[no-untyped-def]
    """`await people(room, name, role, **schedule)` → a joined Peer; all closed at the end."""
    made: list[Peer] = []

    async def make(room: str, name: str, role: str = "member", **schedule: Any) -> Peer:
        peer = Peer(node.url, name)
        made.append(peer)
        await peer.connect()
        await peer.join(room, await node.invite(room, role, **schedule))
        return peer

    yield make
    for peer in made:
        await peer.close()


def audio_from(listener: Peer, publisher: Peer) -> int:
    """RTP audio packets `listener` received from `publisher`'s tracks so far."""
    ids = set(publisher.published_track_ids())
    return sum(t.packets for t in listener.tracks_of("audio") if t.track_id in ids)


async def assert_silenced(listener: Peer, publisher: Peer, tone: ToneAudioTrack) -> None:
    """While the publisher sends 40 more audio frames (0.8 s), at most a few reach `listener`."""
    before, sent = audio_from(listener, publisher), tone.frames_sent
    await publisher.wait_for(lambda: tone.frames_sent >= sent + 40, 5, "the tone keeps going")
    assert audio_from(listener, publisher) - before <= 3, "audio forwarded while muted"


async def assert_heard(listener: Peer, publisher: Peer) -> None:
    before = audio_from(listener, publisher)
    await listener.wait_for(
        lambda: audio_from(listener, publisher) >= before + 20, 5, "audio forwarded"
    )


async def test_a_host_mutes_one_and_the_participant_may_unmute_in_discussion(node, people) -> None:  # type: ignore[no-untyped-def]
    host = await people("thao-luan", "Chủ trì", "host")
    member = await people("thao-luan", "Xã A")
    await host.subscribe(decode=False)
    tone = ToneAudioTrack()
    track_id = (await member.publish([tone]))["tracks"][0]["id"]
    await assert_heard(host, member)

    ack = await host._ok("mute_participant", {"participant_id": member.participant_id})
    assert [t["muted"] for t in ack["tracks"]] == [True]
    told = await member.wait_event("muted_by_host")
    assert told == {"sources": ["microphone"], "reason": "host", "by": "Chủ trì"}
    await host.wait_event("track_updated", lambda t: t["id"] == track_id and t["muted"])
    await assert_silenced(host, member, tone)

    # Discussion mode: the participant decides to speak again.
    await member.mute(track_id, False)
    await assert_heard(host, member)

    # Asking to unmute changes nothing by itself: the participant is asked.
    await host._ok("mute_participant", {"participant_id": member.participant_id})
    await host._ok("ask_unmute", {"participant_id": member.participant_id})
    assert (await member.wait_event("unmute_requested")) == {"by": "Chủ trì"}
    await assert_silenced(host, member, tone)


async def test_mute_all_spares_hosts_and_stop_camera(node, people) -> None:  # type: ignore[no-untyped-def]
    host = await people("im-lang", "Chủ trì", "host")
    a = await people("im-lang", "Xã A")
    b = await people("im-lang", "Xã B")
    host_tone, a_tone, b_tone = ToneAudioTrack(), ToneAudioTrack(), ToneAudioTrack()
    camera = BarcodeVideoTrack()
    await host.publish([host_tone])
    await a.publish([a_tone, camera])
    await b.publish([b_tone])
    await b.subscribe(decode=False)
    for publisher in (host, a):
        await assert_heard(b, publisher)

    ack = await host._ok("mute_all", {})
    assert ack["muted_tracks"] == 2
    await assert_silenced(b, a, a_tone)
    await assert_heard(b, host)  # the host still speaks
    live = node.app[ROOMS].by_name["im-lang"]
    video = next(t for t in live.participants[a.participant_id].tracks if t.kind == "video")
    assert not video.muted  # mute all is about microphones

    await host._ok("stop_camera", {"participant_id": a.participant_id})
    assert video.muted
    assert (await a.wait_event("muted_by_host", lambda m: m["sources"] == ["camera"]))["by"]


async def test_floor_control_in_a_conference(node, people) -> None:  # type: ignore[no-untyped-def]
    host = await people("hoi-nghi", "Chủ trì", "host", mode="conference")
    a = await people("hoi-nghi", "Xã A")
    b = await people("hoi-nghi", "Xã B")
    await host.subscribe(decode=False)
    a_tone, b_tone = ToneAudioTrack(), ToneAudioTrack()
    a_track = (await a.publish([a_tone]))["tracks"][0]
    b_track = (await b.publish([b_tone]))["tracks"][0]
    # Without the floor a microphone is closed by the node from the start.
    assert a_track["muted"] is True and b_track["muted"] is True
    assert (await a.wait_event("muted_by_host"))["reason"] == "floor"
    ack = await a.request("mute", {"track_id": a_track["id"], "muted": False})
    assert code_of(ack) == "forbidden"
    await assert_silenced(host, a, a_tone)

    await a._ok("raise_hand", {})
    await b._ok("raise_hand", {})
    queue = (await host.wait_event("hands_updated", lambda h: len(h["queue"]) == 2))["queue"]
    assert [q["name"] for q in queue] == ["Xã A", "Xã B"]
    assert queue[0]["since"] <= queue[1]["since"]

    granted = await host._ok("grant_floor", {"participant_id": a.participant_id})
    assert granted["floor"] == a.participant_id
    await a.wait_event("floor_granted")
    await a.mute(a_track["id"], False)
    await assert_heard(host, a)
    ack = await b.request("mute", {"track_id": b_track["id"], "muted": False})
    assert code_of(ack) == "forbidden"  # only the floor holder may speak

    # The floor moves to B: A's microphone is closed by the node.
    await host._ok("grant_floor", {"participant_id": b.participant_id})
    await a.wait_event("muted_by_host", lambda m: m["reason"] == "floor", since=0)
    await assert_silenced(host, a, a_tone)
    await b.mute(b_track["id"], False)
    await assert_heard(host, b)
    assert [q["name"] for q in host.last_event("hands_updated")["queue"]] == []

    await host._ok("revoke_floor", {})
    await assert_silenced(host, b, b_tone)
    assert node.app[ROOMS].by_name["hoi-nghi"].floor is None


async def test_hands_are_raised_and_lowered(node, people) -> None:  # type: ignore[no-untyped-def]
    host = await people("gio-tay", "Chủ trì", "host")
    a = await people("gio-tay", "Xã A")
    b = await people("gio-tay", "Xã B")
    await a._ok("raise_hand", {})
    await a._ok("raise_hand", {})  # twice is once
    await b._ok("raise_hand", {})
    assert [q["name"] for q in (await a._ok("lower_hand", {}))["queue"]] == ["Xã B"]
    ack = await a.request("lower_hand", {"participant_id": b.participant_id})
    assert code_of(ack) == "forbidden"
    await host._ok("lower_hand", {"participant_id": b.participant_id})
    await host.wait_event("hands_updated", lambda h: h["queue"] == [])
    await b._ok("raise_hand", {})
    await b.close()  # leaving takes the hand down
    await host.wait_event("hands_updated", lambda h: h["queue"] == [], since=len(host.events) - 1)


def host_actions(target_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every host-only event, aimed at `target_id` where it takes a participant."""
    target = {"participant_id": target_id}
    return [
        ("mute_participant", target),
        ("mute_all", {}),
        ("ask_unmute", target),
        ("stop_camera", target),
        ("set_role", {**target, "role": "cohost"}),
        ("spotlight", target),
        ("grant_floor", target),
        ("revoke_floor", {}),
        ("lower_hand", target),
        ("remove", target),
        ("admit", {"entry_id": "l-0123456789ab"}),
        ("deny", {"entry_id": "l-0123456789ab"}),
        ("lock", {"locked": True}),
        ("end", {}),
    ]


def room_state(node, room: str) -> tuple[Any, ...]:  # type: ignore[no-untyped-def]
    live = node.app[ROOMS].by_name[room]
    return (
        live.describe(),
        dict(live.hands),
        {p.id: (p.role, [t.muted for t in p.tracks]) for p in live.participants.values()},
        list(live.lobby),
    )


async def test_every_host_action_is_refused_to_members_the_lobby_and_the_removed(
    node, people
) -> None:  # type: ignore[no-untyped-def]
    host = await people("quyen-han", "Chủ trì", "host", mode="conference")
    member = await people("quyen-han", "Thành viên")
    victim = await people("quyen-han", "Nạn nhân")
    await victim.publish([ToneAudioTrack()])
    await victim._ok("raise_hand", {})
    waiting = Peer(node.url, "Khách ở phòng chờ")
    removed = Peer(node.url, "Bị mời ra")
    try:
        await waiting.connect()
        assert (await waiting.join("quyen-han", await node.invite("quyen-han", "guest")))["lobby"]
        await removed.connect()
        await removed.join("quyen-han", await node.invite("quyen-han"))
        await host._ok("remove", {"participant_id": removed.participant_id})
        await removed.wait_event("removed")

        before = room_state(node, "quyen-han")
        seen = len(victim.events)
        for actor in (member, waiting, removed):
            for event, payload in host_actions(victim.participant_id):
                ack = await actor.request(event, payload)
                assert code_of(ack) == "forbidden", (actor.name, event, ack)
        assert room_state(node, "quyen-han") == before
        told = [event for event, _ in victim.events[seen:]]
        assert "muted_by_host" not in told and "unmute_requested" not in told
        assert waiting.last_event("admitted") is None and waiting.last_event("denied") is None
    finally:
        await waiting.close()
        await removed.close()


async def test_co_hosts_spotlight_and_two_hosts_at_once(node, people) -> None:  # type: ignore[no-untyped-def]
    host = await people("dong-chu-tri", "Chủ trì", "host")
    deputy = await people("dong-chu-tri", "Phó")
    member = await people("dong-chu-tri", "Xã C")
    await member.publish([ToneAudioTrack()])

    await host._ok("set_role", {"participant_id": deputy.participant_id, "role": "cohost"})
    assert (await deputy.wait_event("role_changed")) == {"role": "cohost"}
    assert code_of(
        await deputy.request("set_role", {"participant_id": host.participant_id, "role": "member"})
    ) == ("forbidden")  # the meeting's host keeps the role

    spot = await deputy._ok("spotlight", {"participant_id": member.participant_id})
    assert spot["spotlight"] == member.participant_id
    await member.wait_event("room_updated", lambda r: r["spotlight"] == member.participant_id)

    # Two hosts at once: one mutes, the other removes the same person.
    mute, remove = await asyncio.gather(
        host.request("mute_participant", {"participant_id": member.participant_id}),
        deputy.request("remove", {"participant_id": member.participant_id}),
    )
    assert "ok" in remove
    assert "ok" in mute or code_of(mute) == "not_found"
    live = node.app[ROOMS].by_name["dong-chu-tri"]
    assert member.participant_id not in live.participants
    assert live.spotlight is None  # the spotlight went with them
    await host.wait_event(
        "participant_left", lambda m: m["participant_id"] == member.participant_id
    )

    await host._ok("set_role", {"participant_id": deputy.participant_id, "role": "member"})
    assert code_of(await deputy.request("mute_all", {})) == "forbidden"
