"""The down connection's offer asks the browser for receiver reference times (rrtr)."""

from __future__ import annotations

import difflib

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import SessionDescription

from server.sfu.connections import with_receiver_reference_times


async def aiortc_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_rrtr_is_added_to_each_video_codec_and_nothing_else_changes() -> None:
    offer = await aiortc_offer()
    assert "rrtr" not in offer
    changed = with_receiver_reference_times(offer)
    added = [
        line[1:]
        for line in difflib.ndiff(offer.splitlines(), changed.splitlines())
        if line[:1] in "+-"
    ]
    video = next(m for m in SessionDescription.parse(changed).media if m.kind == "video")
    media_codecs = [c for c in video.rtp.codecs if c.mimeType != "video/rtx"]
    assert media_codecs and sorted(added) == sorted(
        f" a=rtcp-fb:{c.payloadType} rrtr" for c in media_codecs
    ), added
    # Applying it twice adds nothing more.
    assert with_receiver_reference_times(changed) == changed
