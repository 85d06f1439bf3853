"""The hidden `recorder` participant on a node whose meetings `giaoban record` workers record
(GIAOBAN_RECORDER=workers): the job the node puts on the queue, who may join as recorder, what a
recorder may do, and what the node does when it goes or the recording stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from recording.jobs import RedisJobQueue
from server.app import DATABASE, SECRET_KEY
from server.invitations import mint_invitation, mint_recorder_pass
from server.recordings import active_recording, get_recording
from tests.conftest import Node
from tests.support.media import BarcodeVideoTrack
from tests.support.peer import Peer, SignalingError

ROOM = "ghi-hinh-tho"


async def joined(node: Node, name: str, role: str, peers: list[Peer]) -> Peer:
    peer = Peer(node.url, name, invite=lambda room: node.invite(room, role))
    peers.append(peer)
    await peer.connect()
    await peer.join(ROOM)
    return peer


async def recorder(node: Node, pass_: str, peers: list[Peer]) -> tuple[Peer, dict]:
    peer = Peer(node.url, "recorder")
    peers.append(peer)
    await peer.connect()
    ack = await peer.request("join", {"room": ROOM, "recorder_pass": pass_})
    return peer, ack


async def state(node: Node, recording_id: int) -> str:
    async with node.app[DATABASE].session() as db:
        return (await get_recording(db, recording_id)).state.value


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        await peer.close()


async def test_the_recorder_is_hidden_receives_only_and_its_loss_interrupts(
    workers_node: Node, worker_queue: RedisJobQueue, peers: list[Peer]
) -> None:
    node = workers_node
    host = await joined(node, "Chủ trì", "host", peers)
    member = await joined(node, "Xã Nam", "member", peers)
    await member.publish([BarcodeVideoTrack()])
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    key = node.app[SECRET_KEY]

    # The node recorded nothing itself: it put one job on the queue for a worker.
    lease = await worker_queue.take("w-test", timeout=2)
    assert lease is not None and await worker_queue.pending() == 1
    assert (lease.job.recording_id, lease.job.room) == (recording_id, ROOM)
    assert lease.job.node_url == node.config.base_url
    assert await state(node, recording_id) == "recording"

    # Passes that are not for this recording, this room, or not recorder passes at all.
    other_recording = mint_recorder_pass(key, room=ROOM, recording_id=recording_id + 1)
    other_room = mint_recorder_pass(key, room="phong-khac", recording_id=recording_id)
    invitation = mint_invitation(
        key, room=ROOM, role="host", expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    for bad, code in (
        (other_recording, "conflict"),
        (other_room, "invalid_token"),
        (invitation, "invalid_token"),
        (mint_recorder_pass(b"k" * 40, room=ROOM, recording_id=recording_id), "invalid_token"),
    ):
        _, ack = await recorder(node, bad, peers)
        assert ack.get("error", {}).get("code") == code, (code, ack)
    # Nor is a recorder pass an invitation.
    sneaky = Peer(node.url, "Kẻ lạ")
    peers.append(sneaky)
    await sneaky.connect()
    with pytest.raises(SignalingError) as refused:
        await sneaky.join(ROOM, mint_recorder_pass(key, room=ROOM, recording_id=recording_id))
    assert refused.value.code == "invalid_token"

    seen = len(host.events)
    rec, ack = await recorder(
        node, mint_recorder_pass(key, room=ROOM, recording_id=recording_id), peers
    )
    assert "ok" in ack and ack["ok"]["role"] == "recorder", ack
    assert [p["name"] for p in ack["ok"]["participants"]] == ["Chủ trì", "Xã Nam"]
    rec.participant_id = ack["ok"]["participant_id"]
    await rec.subscribe(decode=False)
    await rec.wait_for(
        lambda: rec.tracks_of("video") and rec.tracks_of("video")[0].packets > 20,
        10,
        "video packets",
    )

    # Hidden: announced to nobody, listed to nobody, counted nowhere.
    late = await joined(node, "Xã Muộn", "member", peers)
    assert late.join_result is not None
    assert [p["name"] for p in late.join_result["participants"]] == ["Chủ trì", "Xã Nam"]
    announced = [p["name"] for e, p in host.events[seen:] if e == "participant_joined"]
    assert announced == ["Xã Muộn"]
    # A host cannot act on it; it can do nothing but receive.
    with pytest.raises(SignalingError) as gone:
        await host._ok("remove", {"participant_id": rec.participant_id})
    assert gone.value.code == "not_found"
    for event, payload in (
        ("publish", {"pc": "main", "sdp": "v=0", "tracks": []}),
        ("chat", {"to": "room", "text": "xin chào"}),
        ("raise_hand", {}),
        ("stop_recording", {}),
        ("mute_participant", {"participant_id": member.participant_id}),
    ):
        answer = await rec.request(event, payload)
        assert answer.get("error", {}).get("code") == "forbidden", (event, answer)
    metrics = await _metrics(node)
    assert "giaoban_recorder_joins_total 1.0" in metrics

    # The recorder's link drops: the recording is interrupted, never dropped; still going,
    # and everyone sees that nothing is being written for now.
    seen = len(member.events)
    await rec.sio.disconnect()

    async def interrupted() -> bool:
        return await state(node, recording_id) == "interrupted"

    await host.wait_for(interrupted, 5, "the recording interrupted")
    paused = await member.wait_event("room_updated", since=seen)
    assert (paused["recording"], paused["recording_paused"]) == (True, True)
    assert host.join_result is not None
    assert (await host._ok("lock", {"locked": False}))["recording"] is True

    # A new recorder of the same recording comes in (no longer paused); the host stops: it is
    # told and let go.
    seen = len(member.events)
    rec2, ack = await recorder(
        node, mint_recorder_pass(key, room=ROOM, recording_id=recording_id), peers
    )
    assert "ok" in ack, ack
    resumed = await member.wait_event("room_updated", since=seen)
    assert (resumed["recording"], resumed["recording_paused"]) == (True, False)
    stopped = await host._ok("stop_recording", {})
    assert stopped["recording"] is False
    await rec2.wait_event("recording_stopped")
    assert (await rec2.request("subscribe", {}))["error"]["code"] == "not_joined"
    assert await state(node, recording_id) == "processing"


async def _metrics(node: Node) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as response:
        return await response.text()


async def test_a_node_that_records_itself_lets_no_recorder_in(
    node: Node, peers: list[Peer]
) -> None:
    host = Peer(node.url, "Chủ trì", invite=lambda room: node.invite(room, "host"))
    peers.append(host)
    await host.connect()
    await host.join(ROOM)
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    pass_ = mint_recorder_pass(node.app[SECRET_KEY], room=ROOM, recording_id=recording_id)
    _, ack = await recorder(node, pass_, peers)
    assert ack["error"]["code"] == "forbidden"
    await host._ok("stop_recording", {})


async def test_ending_the_meeting_stops_the_recording_and_lets_the_recorder_go(
    workers_node: Node, worker_queue: RedisJobQueue, peers: list[Peer]
) -> None:
    node = workers_node
    host = await joined(node, "Chủ trì", "host", peers)
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    pass_ = mint_recorder_pass(node.app[SECRET_KEY], room=ROOM, recording_id=recording_id)
    rec, ack = await recorder(node, pass_, peers)
    assert "ok" in ack, ack
    await joined(node, "Xã Sau", "member", peers)  # in the room after the recorder

    await host._ok("end", {})
    await rec.wait_event("recording_stopped")

    async def processing() -> bool:
        return await state(node, recording_id) == "processing"

    await host.wait_for(processing, 5, "the recording stopped")
    metrics = await _metrics(node)
    assert 'giaoban_recordings_total{event="stopped"} 1.0' in metrics
    assert 'event="interrupted"' not in metrics  # the recorder was let go, not lost


async def test_no_recording_starts_while_no_worker_runs(
    workers_node: Node, redis_url: str, redis_prefix: str, peers: list[Peer]
) -> None:
    node = workers_node
    host = await joined(node, "Chủ trì", "host", peers)
    member = await joined(node, "Xã Nam", "member", peers)
    answer = await host.request("start_recording", {})
    assert answer["error"]["code"] == "no_recorder", answer
    assert "Không có máy ghi hình" in answer["error"]["message"]
    assert host.last_event("room_updated") is None and member.last_event("room_updated") is None
    async with node.app[DATABASE].session() as db:
        assert await active_recording(db, ROOM) is None

    # A worker comes up: the same request starts the recording.
    client = aioredis.from_url(redis_url)
    queue = RedisJobQueue(client, redis_prefix, dead_after=30)
    try:
        # Alive but full: still refused, saying so.
        await queue.announce("w-full", {"recordings": "5", "capacity": "1"})
        answer = await host.request("start_recording", {})
        assert answer["error"]["code"] == "no_recorder" and "busy" in answer["error"]["message"]
        await queue.announce("w-late", {"recordings": "", "capacity": "2"})
        started = await host._ok("start_recording", {})
        assert started["recording"] is True and await queue.pending() == 1
    finally:
        await queue.close()
        await client.aclose()


async def test_the_dashboard_shows_the_recording_workers(
    workers_node: Node, worker_queue: RedisJobQueue, peers: list[Peer]
) -> None:
    import aiohttp

    from tests.functional.test_dashboard_pages import get_json, sign_in

    node = workers_node
    await node.account("quan-tri", "admin")
    host = await joined(node, "Chủ trì", "host", peers)
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    await worker_queue.announce("w-busy", {"recordings": f"{recording_id},99", "capacity": "8"})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, node, "quan-tri")
        status, data, _ = await get_json(http, node.url + "/dashboard/data.json")
    assert status == 200
    assert data["recorders"] == {
        "workers": [
            {"name": "w-busy", "recordings": [str(recording_id), "99"], "capacity": 8},
            {"name": "w-test", "recordings": [], "capacity": 1},
        ],
        "pending": 1,
        "unknown": False,
    }


async def test_a_restarted_node_queues_again_what_redis_lost(
    workers_node: Node, worker_queue: RedisJobQueue, redis_url: str, peers: list[Peer]
) -> None:
    node = workers_node
    host = await joined(node, "Chủ trì", "host", peers)
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    assert [j.recording_id for j in await worker_queue.jobs()] == [recording_id]
    client = aioredis.from_url(redis_url)
    try:
        await client.delete(worker_queue.key)  # Redis restarted without its data
    finally:
        await client.aclose()
    assert await worker_queue.jobs() == []
    await host.close()

    await node.restart()
    (again,) = await worker_queue.jobs()
    assert (again.recording_id, again.room) == (recording_id, ROOM)
    assert again.node_url == node.config.base_url


@pytest.fixture
def fast_job_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes started after this look for lost recording jobs every 0.2 s, not 30 s."""
    from server import recording_control

    monkeypatch.setattr(recording_control, "JOB_CHECK_INTERVAL", 0.2)


async def test_a_running_node_queues_again_what_redis_lost(
    fast_job_checks: None,
    workers_node: Node,
    worker_queue: RedisJobQueue,
    redis_url: str,
    peers: list[Peer],
) -> None:
    from tests.support.wait import eventually

    node = workers_node
    host = await joined(node, "Chủ trì", "host", peers)
    recording_id = (await host._ok("start_recording", {}))["recording_id"]
    client = aioredis.from_url(redis_url)
    try:
        await client.delete(worker_queue.key)  # Redis restarted without its data
    finally:
        await client.aclose()

    async def queued_again() -> bool:
        return [j.recording_id for j in await worker_queue.jobs()] == [recording_id]

    await eventually(queued_again, 5, "the recording's job queued again")
