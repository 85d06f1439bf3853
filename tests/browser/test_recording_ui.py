"""Issue 5 as people live it: in a browser meeting the host records, everyone sees that it is
being recorded; afterwards an archivist gives the recording keywords, finds it by one, plays
the composite in the page and seeks in it, downloads it and verifies its checksum."""

from __future__ import annotations

import hashlib
import re

import av
from playwright.async_api import Response

from server.app import DATABASE, ROOMS
from server.recordings import get_recording
from tests.browser.test_archive_player import download, play_and_seek
from tests.support.archive import recordings_root
from tests.support.browser import join_via_ui, sign_in, wait_for_remote_video
from tests.support.wait import eventually

ROOM = "ghi-hinh-ui"
RECORD_SECONDS = 9.0  # enough to seek to 6 s and play on


async def test_a_recorded_meeting_reaches_the_archivist_whole(node, new_page) -> None:  # type: ignore[no-untyped-def]
    host, member = await new_page(), await new_page()
    await join_via_ui(host, node, ROOM, "Chủ trì", role="host")
    member_id = await join_via_ui(member, node, ROOM, "UBND xã Đoài")
    await wait_for_remote_video(host, member_id)
    assert await member.is_hidden("#toggle-recording")  # only hosts record
    assert await member.is_hidden("#rec-indicator")

    await host.click("#toggle-recording")
    await member.wait_for_selector("#rec-indicator:not([hidden])")
    assert "Đang ghi hình" in await member.inner_text("#rec-indicator")
    await host.wait_for_selector('#toggle-recording[aria-pressed="true"]')
    room = node.app[ROOMS].by_name[ROOM]
    recorder = room.recorder
    assert recorder is not None and room.recording_id is not None
    recording_id = room.recording_id
    await eventually(
        lambda: recorder.recorded_seconds() >= RECORD_SECONDS, 30, "9 s of both cameras"
    )

    await host.click("#toggle-recording")
    await member.wait_for_selector("#rec-indicator", state="hidden")
    await host.wait_for_selector('#toggle-recording[aria-pressed="false"]')
    assert room.recorder is None and room.recording_id is None

    async def ready() -> bool:
        async with node.app[DATABASE].session() as db:
            return (await get_recording(db, recording_id)).state.value == "ready"

    await eventually(ready, 90, "the composite made")
    async with node.app[DATABASE].session() as db:
        recording = await get_recording(db, recording_id)
    composite = next(f for f in recording.files if f.kind.value == "composite")
    composite_path = recordings_root(node) / composite.path
    with av.open(str(composite_path)) as container:
        width = container.streams.video[0].codec_context.width
        seconds = float(container.duration or 0) / av.time_base
    assert seconds >= RECORD_SECONDS - 1, seconds

    # The archivist: keywords on the recording's page, then found by one of them.
    await node.account("luu-tru", "archivist")
    page = await new_page()
    responses: list[Response] = []

    def seen(response: Response) -> None:
        responses.append(response)

    page.on("response", seen)
    await sign_in(page, node, "luu-tru")
    await page.goto(f"{node.url}/archive/{recording_id}", wait_until="domcontentloaded")
    await page.fill("#meta-keywords", "nông thôn mới, thủy lợi")
    await page.click("#metadata-form [type=submit]")
    await page.wait_for_selector("#metadata-form")
    await page.goto(f"{node.url}/archive", wait_until="domcontentloaded")
    await page.fill("#archive-keyword", "nông thôn mới")
    await page.click("#archive-search [type=submit]")
    await page.wait_for_url(re.compile(r"/archive\?.*keyword="))
    rows = page.locator("#archive-results tr[data-recording]")
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-recording") == str(recording_id)
    await rows.first.locator("a.archive-title").click()
    await page.wait_for_url(f"**/archive/{recording_id}")

    video = await page.wait_for_selector(f"#file-{composite.id} video.archive-player")
    assert video is not None
    await play_and_seek(
        page,
        video,
        responses,
        width=width,
        size=composite_path.stat().st_size,
        seconds=seconds,
    )
    shown = (await page.inner_text(f"#file-{composite.id} code.archive-sha")).strip()
    data, _name = await download(page, composite.id)
    assert hashlib.sha256(data).hexdigest() == shown == composite.sha256
    await page.click("#verify-form [type=submit]")
    result = await page.wait_for_selector("#verify-result")
    assert result is not None and await result.get_attribute("class") == "archive-ok"


async def test_everyone_sees_when_the_recorder_is_lost_and_back(  # type: ignore[no-untyped-def]
    workers_node, worker_queue, new_page
) -> None:
    """With recording workers: while the room's recorder is gone (its worker died) the
    indicator says the recording is interrupted; it says recording again once one is back."""
    from server.app import SECRET_KEY
    from server.invitations import mint_recorder_pass
    from tests.support.peer import Peer

    node = workers_node
    host, member = await new_page(), await new_page()
    await join_via_ui(host, node, ROOM, "Chủ trì", role="host")
    await join_via_ui(member, node, ROOM, "UBND xã Đoài")
    await host.click("#toggle-recording")
    await member.wait_for_selector('#rec-indicator:not([hidden])[data-paused="false"]')
    recording_id = node.app[ROOMS].by_name[ROOM].recording_id

    async def recorder_joins() -> Peer:
        # Standing in for a worker's recorder: the node's side is what is under test.
        peer = Peer(node.url, "recorder")
        await peer.connect()
        grant = mint_recorder_pass(node.app[SECRET_KEY], room=ROOM, recording_id=recording_id)
        ack = await peer.request("join", {"room": ROOM, "recorder_pass": grant})
        assert "ok" in ack, ack
        return peer

    first = await recorder_joins()
    await first.sio.disconnect()  # its worker died
    await member.wait_for_selector('#rec-indicator[data-paused="true"]')
    assert "Ghi hình gián đoạn" in await member.inner_text("#rec-indicator")
    second = await recorder_joins()
    try:
        await member.wait_for_selector('#rec-indicator[data-paused="false"]')
        assert "Đang ghi hình" in await member.inner_text("#rec-indicator")
    finally:
        await second.close()
