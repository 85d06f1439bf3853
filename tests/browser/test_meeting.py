"""Two officials meet through the real pages in headless Chromium."""

from __future__ import annotations

import asyncio

from server.app import ROOMS
from tests.support.browser import (
    down_round_trip,
    down_sender_reports,
    join_via_ui,
    received_video,
    wait_for_remote_video,
)


async def test_two_pages_see_each_other_and_a_leave_shows(node, new_page):
    first, second = await new_page(), await new_page()
    first_id = await join_via_ui(first, node, "giao-ban-tinh", "UBND tỉnh")
    second_id = await join_via_ui(second, node, "giao-ban-tinh", "UBND xã A")

    await wait_for_remote_video(first, second_id)
    await wait_for_remote_video(second, first_id)
    # Both directions at once: each page decodes the other's camera at a real frame rate
    # (Chromium's fake camera sends 20 fps).
    seen_by_first, seen_by_second = await asyncio.gather(
        received_video(first, second_id, 3.0), received_video(second, first_id, 3.0)
    )
    for seen in (seen_by_first, seen_by_second):
        assert seen["fps"] >= 10, seen
        assert seen["videoWidth"] > 0, seen

    # Each page lists the other by name.
    assert "UBND xã A" in await first.inner_text(
        f'#participants li[data-participant-id="{second_id}"]'
    )
    assert "UBND tỉnh" in await second.inner_text(
        f'#participants li[data-participant-id="{first_id}"]'
    )

    await second.click("#leave")
    await first.wait_for_selector(
        f'#grid .tile[data-participant-id="{second_id}"]', state="detached", timeout=5_000
    )
    await first.wait_for_selector(
        f'#participants li[data-participant-id="{second_id}"]', state="detached", timeout=5_000
    )
    assert node.stats.forwarded_packets > 0


async def test_the_prejoin_check_shows_camera_microphone_level_and_devices(node, new_page):
    page = await new_page()
    token = await node.invite("kiem-tra", "member")
    await page.goto(node.invitation_url("kiem-tra", token), wait_until="domcontentloaded")
    await page.wait_for_function(
        "() => { const v = document.querySelector('#preview'); return v && v.videoWidth > 0; }"
    )
    # Chromium's fake microphone plays a beep: the level meter moves.
    await page.wait_for_function("() => document.querySelector('#mic-level').value > 0.01")
    for picker in ("#camera-select", "#mic-select"):
        devices = await page.eval_on_selector_all(
            f"{picker} option", "options => options.map(o => [o.value, o.textContent])"
        )
        real = [d for d in devices if d[0] != "off"]
        assert real and all(label.strip() for _, label in real), (picker, devices)
        assert await page.eval_on_selector(picker, "s => s.value") == real[0][0], devices


SCREEN_FRAMES = """
(pid) => {
  const tile = document.querySelector(`#screens .screen-tile[data-participant-id="${pid}"]`);
  const video = tile && tile.querySelector('video');
  return video && video.videoWidth > 0 ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
}
"""


async def test_a_shared_screen_reaches_the_other_page_and_goes_when_stopped(node, new_page):
    presenter, viewer = await new_page(), await new_page()
    presenter_id = await join_via_ui(presenter, node, "trinh-chieu", "Sở Nông nghiệp")
    await join_via_ui(viewer, node, "trinh-chieu", "UBND xã C")
    await wait_for_remote_video(viewer, presenter_id)

    # Chromium's fake capture (--use-fake-ui-for-media-stream) answers getDisplayMedia.
    await presenter.click("#share-screen")
    await presenter.wait_for_selector("#sharing-note", state="visible", timeout=5_000)
    assert await presenter.get_attribute("#share-screen", "aria-pressed") == "true"
    frames = await viewer.wait_for_function(SCREEN_FRAMES, arg=presenter_id, timeout=10_000)
    start = await frames.json_value()
    # The shared screen plays on: 10 more frames decoded (the camera tile stays too).
    await viewer.wait_for_function(
        f"(pid) => ({SCREEN_FRAMES.strip()})(pid) >= {start + 10}", arg=presenter_id
    )
    await wait_for_remote_video(viewer, presenter_id)
    room = node.app[ROOMS].by_name["trinh-chieu"]
    sources = {t.source for t in room.participants[presenter_id].tracks}
    assert {"camera", "screen"} <= sources, sources

    await presenter.click("#stop-share")
    await viewer.wait_for_selector(
        f'#screens .screen-tile[data-participant-id="{presenter_id}"]',
        state="detached",
        timeout=5_000,
    )
    await presenter.wait_for_selector("#sharing-note", state="hidden", timeout=5_000)
    sources = {t.source for t in room.participants[presenter_id].tracks}
    assert "screen" not in sources, sources
    await wait_for_remote_video(viewer, presenter_id)  # the camera goes on


async def test_a_page_that_only_receives_learns_its_round_trip_time(node, new_page):
    # Chromium times a connection it only receives on through the node's DLRR answers; with
    # the round-trip time known it asks again for a lost packet after it, not after 100 ms.
    publisher, subscriber = await new_page(), await new_page()
    publisher_id = await join_via_ui(publisher, node, "rtt", "UBND xã B")
    await join_via_ui(subscriber, node, "rtt", "UBND huyện")
    await wait_for_remote_video(subscriber, publisher_id)
    measured = await down_round_trip(subscriber)
    assert measured is not None, "Chromium measured no round-trip time on its down connection"
    assert measured["measurements"] >= 1, measured
    assert 0 <= measured["seconds"] < 0.05, f"loopback: a few milliseconds, got {measured}"


async def test_a_receiving_page_gets_sender_reports_for_audio_and_video(node, new_page):
    # The node's sender reports go with the forwarded packets (the C loop): the browser needs
    # them to line audio up with video, and reads the sender's packet count from them.
    publisher, subscriber = await new_page(), await new_page()
    publisher_id = await join_via_ui(publisher, node, "reports", "UBND xã B")
    await join_via_ui(subscriber, node, "reports", "UBND huyện")
    await wait_for_remote_video(subscriber, publisher_id)
    for kind in ("audio", "video"):
        reports = await down_sender_reports(subscriber, kind, reports=2)
        assert reports is not None, f"no two sender reports for {kind} within 8 s"
        # The count is the node's at the report, up to a second before the page's count.
        assert 0 < reports["packetsSent"] <= reports["packetsReceived"], (kind, reports)
        assert reports["packetsSent"] >= reports["packetsReceived"] // 3, (kind, reports)
        assert abs(reports["clockOffsetMs"]) < 3000, f"the report's NTP time is now: {reports}"


async def test_muting_the_microphone_shows_and_stops_forwarding(node, new_page):
    first, second = await new_page(), await new_page()
    first_id = await join_via_ui(first, node, "mute-ui", "Sở Nội vụ")
    await join_via_ui(second, node, "mute-ui", "UBND xã B")
    await wait_for_remote_video(second, first_id)

    await first.click("#toggle-mic")
    assert await first.get_attribute("#toggle-mic", "aria-pressed") == "true"
    await second.wait_for_selector(
        f'#grid .tile[data-participant-id="{first_id}"][data-mic-muted="true"]', timeout=5_000
    )
    room = node.app[ROOMS].by_name["mute-ui"]
    audio = [t for t in room.participants[first_id].tracks if t.kind == "audio"]
    assert audio and all(t.muted for t in audio)

    await first.click("#toggle-cam")
    await second.wait_for_selector(
        f'#grid .tile[data-participant-id="{first_id}"][data-cam-muted="true"]', timeout=5_000
    )


async def test_pages_rejoin_by_themselves_after_the_node_restarts(node, new_page):
    first, second = await new_page(), await new_page()
    await join_via_ui(first, node, "restart", "UBND tỉnh")
    second_id = await join_via_ui(second, node, "restart", "UBND xã D")
    await wait_for_remote_video(first, second_id)

    await node.restart()  # every socket and peer connection drops at once
    for page in (first, second):
        await page.wait_for_selector(
            '#conn-state[data-state="reconnecting"], #conn-state[data-state="connecting"]',
            timeout=5_000,
        )
    # Both pages come back on their own, under new participant ids, and see each other again.
    for page in (first, second):
        await page.wait_for_selector('#conn-state[data-state="connected"]', timeout=20_000)
    new_first = await first.evaluate("() => window.giaoban.client.participantId")
    new_second = await second.evaluate("() => window.giaoban.client.participantId")
    assert new_second != second_id
    await wait_for_remote_video(first, new_second, timeout=10.0)
    await wait_for_remote_video(second, new_first, timeout=10.0)
    seen = await received_video(first, new_second, 2.0)
    assert seen["fps"] >= 10, seen
    # The stale tile of the participant who existed before the restart is gone.
    assert await first.query_selector(f'#grid .tile[data-participant-id="{second_id}"]') is None


async def test_a_page_whose_media_path_breaks_reconnects_it_by_itself(node, new_page):
    presenter, viewer = await new_page(), await new_page()
    presenter_id = await join_via_ui(presenter, node, "duong-truyen", "UBND tỉnh")
    viewer_id = await join_via_ui(viewer, node, "duong-truyen", "UBND xã G")
    await wait_for_remote_video(viewer, presenter_id)
    room = node.app[ROOMS].by_name["duong-truyen"]
    broken = room.participants[viewer_id].down
    # The viewer's media path breaks while its signaling stays up: the node's sockets of
    # that down connection close, as when a commune's link drops UDP.
    dtls = broken.pc.getTransceivers()[0].sender.transport
    for protocol in dtls.transport._connection._protocols:
        protocol.transport.close()

    await viewer.wait_for_selector('#conn-state[data-state="reconnecting"]', timeout=15_000)
    await viewer.wait_for_selector('#conn-state[data-state="connected"]', timeout=20_000)
    # Same participant (no rejoin needed), a new down connection, the video plays again.
    assert await viewer.evaluate("() => window.giaoban.client.participantId") == viewer_id
    assert room.participants[viewer_id].down is not broken
    await wait_for_remote_video(viewer, presenter_id, timeout=10.0)
    seen = await received_video(viewer, presenter_id, 2.0)
    assert seen["fps"] >= 10, seen


async def test_the_active_speaker_is_highlighted_on_the_other_page(node, new_page):
    first, second = await new_page(), await new_page()
    first_id = await join_via_ui(first, node, "phat-bieu", "UBND tỉnh")
    second_id = await join_via_ui(second, node, "phat-bieu", "UBND xã H")
    await wait_for_remote_video(first, second_id)
    await wait_for_remote_video(second, first_id)
    # Only the second page's (fake, beeping) microphone is on: the node names it the speaker
    # from the audio level its packets carry (RFC 6464), and both pages show it.
    await first.click("#toggle-mic")
    await first.wait_for_selector(f'#grid .tile.speaking[data-participant-id="{second_id}"]')
    await second.wait_for_selector("#self-view.speaking")
    # The floor changes hands.
    await second.click("#toggle-mic")
    await first.click("#toggle-mic")
    await second.wait_for_selector(f'#grid .tile.speaking[data-participant-id="{first_id}"]')
    await first.wait_for_selector("#self-view.speaking")
    assert (
        await first.query_selector(f'#grid .tile.speaking[data-participant-id="{second_id}"]')
        is None
    )


async def test_a_name_with_markup_is_shown_as_text(node, new_page):
    hostile = '<img src=x onerror="window.__pwned=1">UBND xã E'
    watcher, other = await new_page(), await new_page()
    await join_via_ui(watcher, node, "names", "UBND tỉnh")
    other_id = await join_via_ui(other, node, "names", hostile)
    entry = f'#participants li[data-participant-id="{other_id}"]'
    await watcher.wait_for_selector(entry, timeout=5_000)
    assert hostile in await watcher.inner_text(entry)
    assert await watcher.query_selector(f"{entry} img") is None
    assert await watcher.evaluate("() => window.__pwned") is None
