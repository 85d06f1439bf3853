"""Real aiortc peers over loopback against a running node: what the SFU forwards, and how."""

from __future__ import annotations

import threading
import time

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest
from aiortc import RTCDtlsTransport, sdp

from server.app import ROOMS
from server.sfu import aiortc_tap
from tests.support.frames import check_frames
from tests.support.loss import slow_link
from tests.support.media import BarcodeVideoTrack, ToneAudioTrack
from tests.support.wait import eventually


def video_of(peer):  # type: ignore[no-untyped-def]
    tracks = peer.tracks_of("video")
    return tracks[0] if tracks else None


def audio_of(peer):  # type: ignore[no-untyped-def]
    tracks = peer.tracks_of("audio")
    return tracks[0] if tracks else None


async def test_two_subscribers_get_every_frame_in_order_at_the_sent_size(node, peers):
    publisher, first, second = await peers("pub"), await peers("sub-1"), await peers("sub-2")
    for peer in (publisher, first, second):
        await peer.join("forwarding")
    await first.subscribe()
    await second.subscribe()
    await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])

    for sub in (first, second):
        await sub.wait_for(
            lambda s=sub: video_of(s) and len(video_of(s).frames) >= 90,
            15,
            f"90 video frames at {sub.name}",
        )
        report = check_frames(video_of(sub).frames)
        assert report.unreadable == 0, report.summary()
        assert report.increasing, report.summary()
        assert report.missing == 0, report.summary()
        assert report.sizes == {(640, 360)}, report.summary()
        assert report.fps >= 25, report.summary()
    assert node.stats.forwarded_packets > 0
    assert node.stats.dropped_packets == 0


async def test_h264_is_forwarded_when_the_publisher_offers_only_that(node, peers):
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("h264")
    await sub.join("h264")
    await sub.subscribe()
    await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()], video_codec="video/H264")
    await sub.wait_for(
        lambda: video_of(sub) and len(video_of(sub).frames) >= 60, 15, "60 H.264 frames"
    )
    room = node.app[ROOMS].by_name["h264"]
    (video,) = [t for p in room.participants.values() for t in p.tracks if t.kind == "video"]
    assert video.codec.mimeType.lower() == "video/h264", "the publisher's codec, as it sent it"
    # The subscriber is offered that codec only (and RTX): nothing to transcode to.
    offer = sdp.SessionDescription.parse(sub.down_pc.remoteDescription.sdp)
    (video_line,) = [m for m in offer.media if m.kind == "video"]
    assert {c.mimeType.lower() for c in video_line.rtp.codecs} == {"video/h264", "video/rtx"}
    report = check_frames(video_of(sub).frames)
    assert report.unreadable == 0, report.summary()
    assert report.increasing and report.missing == 0, report.summary()
    assert report.sizes == {(640, 360)}, report.summary()


async def test_a_publisher_a_round_trip_away_is_asked_about_once_per_lost_packet(node, peers):
    # A 100 ms round trip and 3 % loss between every peer and the node: the node asks the
    # publisher again for a packet only after a round trip and a half, so about once per
    # lost packet (every 20 ms, it asked about five times before the answer could come).
    with slow_link(delay_ms=50, rate=0.03) as link:
        publisher, sub = await peers("pub"), await peers("sub")
        await publisher.join("slow-link")
        await sub.join("slow-link")
        await sub.subscribe()
        await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])
        room = node.app[ROOMS].by_name["slow-link"]
        asked: list[int] = []
        for track in [t for p in room.participants.values() for t in p.tracks]:
            send_nack = track._receiver._send_rtcp_nack

            async def counting(ssrc, lost, send_nack=send_nack):  # type: ignore[no-untyped-def]
                asked.extend(lost)
                await send_nack(ssrc, lost)

            track._receiver._send_rtcp_nack = counting
        await sub.wait_for(
            lambda: video_of(sub) and len(video_of(sub).frames) >= 180, 25, "180 frames"
        )
    # Until the first answer the round trip is unknown and the first lost packet is asked for
    # every 20 ms; after it, each is asked for once, or twice when a NACK or answer was lost.
    times: dict[int, int] = {}
    for seq in asked:
        times[seq] = times.get(seq, 0) + 1
    _first, *later = times.values()  # in the order first asked for
    assert link.dropped_in >= 20 and len(later) >= 3, (link, times)
    assert sum(later) / len(later) <= 1.5, times
    report = check_frames(video_of(sub).frames)
    assert report.unreadable == 0 and report.increasing, report.summary()


async def test_late_joiner_decodes_video_within_a_second(node, peers):
    publisher, early = await peers("pub"), await peers("early")
    await publisher.join("late")
    await early.join("late")
    await early.subscribe()
    await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])
    # The publisher is well past its first keyframe before the late joiner arrives.
    await early.wait_for(
        lambda: video_of(early) and len(video_of(early).frames) >= 45,
        10,
        "the early subscriber receiving video",
    )

    late = await peers("late-joiner")
    await late.join("late")
    await late.subscribe()
    await late.wait_for(
        lambda: video_of(late) and video_of(late).first_frame_at,
        5,
        "first frame at the late joiner",
    )
    assert late.down_connected_at is not None
    delay = video_of(late).first_frame_at - late.down_connected_at
    assert delay < 1.0, f"first frame {delay * 1000:.0f} ms after the down connection came up"
    await late.wait_for(lambda: len(video_of(late).frames) >= 30, 5, "30 frames at late joiner")
    report = check_frames(video_of(late).frames)
    assert report.increasing and report.missing == 0, report.summary()


async def test_audio_arrives_at_fifty_packets_a_second(node, peers):
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("audio")
    await sub.join("audio")
    await sub.subscribe(decode=False)
    await publisher.publish([ToneAudioTrack()])
    await sub.wait_for(
        lambda: audio_of(sub) and audio_of(sub).packets >= 10, 10, "audio packets at the subscriber"
    )
    start_packets, start = audio_of(sub).packets, time.monotonic()
    await sub.wait_for(lambda: time.monotonic() - start >= 3.0, 5, "a 3 s window")
    rate = (audio_of(sub).packets - start_packets) / (time.monotonic() - start)
    assert 45 <= rate <= 55, f"{rate:.1f} audio packets/s"


async def test_mute_stops_forwarding_and_unmute_resumes(node, peers):
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("mute")
    await sub.join("mute")
    await sub.subscribe()
    camera = BarcodeVideoTrack()
    result = await publisher.publish([camera])
    track_id = result["tracks"][0]["id"]
    await sub.wait_for(
        lambda: video_of(sub) and len(video_of(sub).frames) >= 30, 10, "video before mute"
    )

    ack = await publisher.mute(track_id, True)
    assert ack["track"]["muted"] is True
    update = await sub.wait_event("track_updated", lambda p: p["id"] == track_id)
    assert update["muted"] is True
    muted_at = time.monotonic()
    sent_at_mute = camera.frames_sent
    # The publisher keeps sending 30 more frames; none of them may reach the subscriber
    # (frames already in flight when the mute took effect arrive within ~100 ms).
    await publisher.wait_for(
        lambda: camera.frames_sent >= sent_at_mute + 30, 5, "the publisher sending while muted"
    )
    late = [f for f in video_of(sub).frames if f.t > muted_at + 0.2]
    assert late == [], f"{len(late)} frames forwarded while muted"

    count_before = len(video_of(sub).frames)
    sent_at_unmute = camera.frames_sent
    await publisher.mute(track_id, False)
    await sub.wait_for(
        lambda: len(video_of(sub).frames) >= count_before + 20, 5, "video after unmute"
    )
    resumed = check_frames(video_of(sub).frames[count_before:])
    assert resumed.increasing and resumed.unreadable == 0, resumed.summary()
    assert resumed.last_number is not None and resumed.last_number > sent_at_unmute
    # Frames the camera made while muted never reach the subscriber (a few were already in
    # the encoder or on the wire when the mute took effect).
    during_mute = [
        f.number
        for f in video_of(sub).frames
        if f.number is not None and sent_at_mute + 3 < f.number < sent_at_unmute
    ]
    assert during_mute == [], f"frames made while muted were forwarded: {during_mute}"


async def test_node_neither_decodes_nor_encodes(node, peers, monkeypatch):
    created = {"decoders": 0, "encoders": 0}
    by_task: dict[int, int] = {}  # RTP packets parsed in aiortc's DTLS task, per transport
    handle_rtp_data = RTCDtlsTransport._handle_rtp_data

    async def counting_handle_rtp_data(self, data, arrival_time_ms):  # type: ignore[no-untyped-def]
        by_task[id(self)] = by_task.get(id(self), 0) + 1
        await handle_rtp_data(self, data, arrival_time_ms)

    get_decoder, get_encoder = aiortc.rtcrtpreceiver.get_decoder, aiortc.rtcrtpsender.get_encoder

    def counting_decoder(codec):  # type: ignore[no-untyped-def]
        created["decoders"] += 1
        return get_decoder(codec)

    def counting_encoder(codec):  # type: ignore[no-untyped-def]
        created["encoders"] += 1
        return get_encoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", counting_decoder)
    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", counting_encoder)
    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", counting_handle_rtp_data)

    publisher, first, second = await peers("pub"), await peers("sub-1"), await peers("sub-2")
    for peer in (publisher, first, second):
        await peer.join("no-transcoding")
    await first.subscribe()
    await second.subscribe()
    await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])
    for sub in (first, second):
        await sub.wait_for(
            lambda s=sub: (
                video_of(s)
                and len(video_of(s).frames) >= 30
                and audio_of(s)
                and len(audio_of(s).frames) >= 50
            ),
            10,
            f"audio and video at {sub.name}",
        )

    # The publisher encodes its 2 tracks, each subscriber decodes 2: nothing else may.
    assert created == {"decoders": 4, "encoders": 2}
    room = node.app[ROOMS].by_name["no-transcoding"]
    up_receivers = [t._receiver for p in room.participants.values() for t in p.tracks]
    assert len(up_receivers) == 2
    assert not any(aiortc_tap.decoding(r) for r in up_receivers)
    # The publisher's packets are forwarded where they arrive, not in aiortc's DTLS task
    # (which sees the first few, before the node knows their transport).
    (transport,) = {r.transport for r in up_receivers}  # bundled
    received = transport._RTCDtlsTransport__rx_packets
    assert received >= 80  # 50 audio packets and 30 video frames at least
    assert by_task.get(id(transport), 0) < received / 10, (by_task.get(id(transport)), received)
    decoder_threads = [t for t in threading.enumerate() if t.name.endswith("-decoder")]
    assert len(decoder_threads) == 4, [t.name for t in decoder_threads]  # the subscribers'


@pytest.mark.skipif(not aiortc_tap.RTCP_IN_C, reason="no RTCP reader in C")
async def test_a_subscribers_reports_end_in_c(node, peers, monkeypatch):
    in_python: list[bytes] = []
    read_compound = aiortc_tap._SubscriberRtcp.read_compound

    def counting_read_compound(self, compound, arrived):  # type: ignore[no-untyped-def]
        in_python.append(compound)
        read_compound(self, compound, arrived)

    monkeypatch.setattr(aiortc_tap._SubscriberRtcp, "read_compound", counting_read_compound)
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("reports-in-c")
    await sub.join("reports-in-c")
    await sub.subscribe()
    await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])
    room = node.app[ROOMS].by_name["reports-in-c"]
    (down,) = [p.down for p in room.participants.values() if p.down is not None and p.down.tracks]
    dtls = down.pc.getTransceivers()[0].sender.transport  # bundled: one for both tracks

    # aiortc's receivers each send a receiver report about once a second: the first goes
    # through the Python lane, which hands the socket to a C Reader for the rest.
    def ended_in_c() -> int:
        lane = getattr(dtls, "_giaoban_subscriber_rtcp", None)
        return lane.reader.ended if lane is not None and lane.reader else 0

    ended = await eventually(lambda: ended_in_c() >= 3, 15, "three reports ended in C")
    assert ended
    reports_in_python = [c for c in in_python if c[1] == 201]  # compounds opening with an RR
    assert len(reports_in_python) <= 2, "only before the Reader took the socket"


async def test_tracks_and_participants_come_and_go(node, peers):
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("churn")
    await sub.join("churn")
    await sub.subscribe()
    await publisher.publish([BarcodeVideoTrack()])
    screen = BarcodeVideoTrack(width=1280, height=720, fps=5)
    shared = await publisher.publish([screen], pc="screen", sources={"video": "screen"})
    screen_id = shared["tracks"][0]["id"]
    assert shared["tracks"][0]["source"] == "screen"
    await sub.wait_for(
        lambda: screen_id in sub.received and sub.received[screen_id].frames,
        10,
        "the screen share at the subscriber",
    )
    assert {(f.width, f.height) for f in sub.received[screen_id].frames} == {(1280, 720)}

    await publisher.unpublish("screen")
    removed = await sub.wait_event("track_removed", lambda p: p["track_id"] == screen_id)
    assert removed["participant_id"] == publisher.participant_id
    await sub.wait_for(
        lambda: screen_id not in sub.mid_to_track.values(), 5, "a re-offer without the screen share"
    )

    publisher_id = publisher.participant_id
    await publisher.leave()
    left = await sub.wait_event("participant_left")
    assert left["participant_id"] == publisher_id
    room = node.app[ROOMS].by_name["churn"]
    assert list(room.participants) == [sub.participant_id]


@pytest.mark.parametrize("count", [3])
async def test_a_new_publisher_reaches_existing_subscribers(node, peers, count):
    """Everyone publishes and subscribes: each sees every other's video."""
    everyone = [await peers(f"site-{i}") for i in range(count)]
    for peer in everyone:
        await peer.join("mesh")
        await peer.subscribe()
        await peer.publish([BarcodeVideoTrack(fps=15)])
    for peer in everyone:
        await peer.wait_for(
            lambda p=peer: (
                len([t for t in p.tracks_of("video") if len(t.frames) >= 10]) == count - 1
            ),
            15,
            f"{count - 1} videos at {peer.name}",
        )


async def test_active_speaker_is_the_participant_who_makes_sound(node, peers):
    from aiortc.mediastreams import AudioStreamTrack  # aiortc's silence

    loud, quiet, listener = await peers("loud"), await peers("quiet"), await peers("listener")
    for peer in (loud, quiet, listener):
        await peer.join("speaker")
    await quiet.publish([AudioStreamTrack()])
    await loud.publish([ToneAudioTrack(amplitude=0.5)])
    event = await listener.wait_event(
        "active_speaker", lambda p: p["participant_id"] is not None, timeout=5
    )
    assert event["participant_id"] == loud.participant_id
    assert 0 <= event["level"] < 70, event  # louder than the floor of -70 dBov
    updated = await listener.wait_event(
        "participant_updated", lambda p: p["id"] == loud.participant_id
    )
    assert [t["kind"] for t in updated["tracks"]] == ["audio"]

    # The loud one goes silent (muted): the speaker changes away from them.
    track_id = loud.published_track_ids()[0]
    since = len(listener.events)
    await loud.mute(track_id, True)
    cleared = await listener.wait_event("active_speaker", timeout=5, since=since)
    assert cleared["participant_id"] != loud.participant_id


async def test_a_new_peer_connection_under_the_same_name_replaces_the_old(node, peers):
    """What a browser does after its publishing connection failed: a fresh RTCPeerConnection."""
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("replace")
    await sub.join("replace")
    await sub.subscribe()
    first = await publisher.publish([BarcodeVideoTrack()])
    old_id = first["tracks"][0]["id"]
    await sub.wait_for(
        lambda: old_id in sub.received and len(sub.received[old_id].frames) >= 10,
        10,
        "video from the first connection",
    )

    old_pc = publisher.up_pcs.pop("main")
    publisher._up_tracks.pop("main")
    await old_pc.close()
    second = await publisher.publish([BarcodeVideoTrack(start=5000)])
    new_id = second["tracks"][0]["id"]
    assert new_id != old_id
    removed = await sub.wait_event("track_removed", lambda p: p["track_id"] == old_id)
    assert removed["participant_id"] == publisher.participant_id
    await sub.wait_for(
        lambda: new_id in sub.received and len(sub.received[new_id].frames) >= 10,
        10,
        "video from the replacing connection",
    )
    numbers = [f.number for f in sub.received[new_id].frames]
    # The m-line is reused: aiortc's receiver may still release the old stream's last frame.
    assert len([n for n in numbers if n is None or n < 5000]) <= 1, numbers
    report = check_frames(sub.received[new_id].frames[1:])
    assert report.increasing and report.missing == 0, report.summary()
    assert node.stats.peer_connections == 2  # the publisher's new one and the subscriber's


async def test_renegotiating_a_connection_adds_a_track(node, peers):
    """Join with the microphone only, turn the camera on later: the same connection grows."""
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("grow")
    await sub.join("grow")
    await sub.subscribe()
    first = await publisher.publish([ToneAudioTrack()])
    assert [t["kind"] for t in first["tracks"]] == ["audio"]
    await sub.wait_for(
        lambda: audio_of(sub) and len(audio_of(sub).frames) >= 20,
        10,
        "audio before the camera is on",
    )
    second = await publisher.publish([BarcodeVideoTrack()])  # same pc "main", renegotiated
    assert [t["kind"] for t in second["tracks"]] == ["video"]
    assert len(publisher.up_pcs) == 1
    await sub.wait_for(
        lambda: video_of(sub) and len(video_of(sub).frames) >= 20,
        10,
        "video after the renegotiation",
    )
    audio_count = len(audio_of(sub).frames)
    await sub.wait_for(
        lambda: len(audio_of(sub).frames) >= audio_count + 20, 5, "audio still flowing"
    )
    assert not sub.errors and not publisher.errors
