"""An archivist in Chromium finds a recording in the archive by keyword, plays its files in the
page's player and seeks in them (HTTP range requests), downloads them with the checksum shown,
and verifies the recording's integrity."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from playwright.async_api import ElementHandle, Page, Response

from tests.support.archive import make_recording, recordings_root
from tests.support.browser import sign_in

SECONDS = 8.0  # long enough to seek well past what has played
SEEK_TO = 6.0
TRACK = "giao-ban-thuy-loi/1/an-video.mkv"  # VP8 in Matroska, as the recorder writes
COMPOSITE = "giao-ban-thuy-loi/1/composite.mp4"  # H.264 + AAC, as post-processing writes


async def play_and_seek(
    page: Page,
    video: ElementHandle,
    responses: list[Response],
    *,
    width: int,
    size: int,
    seconds: float = SECONDS,
) -> None:
    """Start the player as a person does (Space on it), wait until it plays, seek to SEEK_TO
    and wait until it plays on from there; its file (`size` bytes, `seconds` long, a picture
    `width` pixels wide) came with HTTP range requests answered 206 Partial Content."""
    url = await video.get_attribute("src")
    assert url
    assert await video.evaluate("v => v.paused && v.readyState === 0")  # preload="none"
    # The player's own keyboard control: Space on the focused player plays it (a click on the
    # picture only focuses it in this Chromium).
    await video.focus()
    await page.keyboard.press("Space")
    await page.wait_for_function(
        "v => !v.paused && v.readyState >= 2 && v.currentTime > 0.2", arg=video
    )
    assert await video.evaluate("v => v.error === null")
    assert await video.evaluate("v => v.videoWidth") == width
    duration = await video.evaluate("v => v.duration")
    assert abs(duration - seconds) < 0.5, duration

    before = await video.evaluate("v => v.currentTime")
    assert before < SEEK_TO - 1, before  # a seek forward, not to where it already is
    await video.evaluate(
        """(v, target) => {
          v.seekedAt = null;
          v.addEventListener('seeked', () => { v.seekedAt = v.currentTime; }, {once: true});
          v.currentTime = target;
        }""",
        SEEK_TO,
    )
    await page.wait_for_function("v => v.seekedAt !== null", arg=video)
    landed = await video.evaluate("v => v.seekedAt")
    assert abs(landed - SEEK_TO) < 0.25, landed
    # It plays on from the new place.
    await page.wait_for_function(
        "([v, from]) => !v.paused && v.readyState >= 2 && v.currentTime > from + 0.3",
        arg=[video, SEEK_TO],
    )
    await video.evaluate("v => v.pause()")

    # Chromium asks for ranges (`bytes=0-` to start); a file this small comes whole in the
    # first answer, so the seek itself is served from what the player holds.
    ranged = []
    for response in responses:
        if not response.url.endswith(url):
            continue
        asked = await response.request.header_value("range")
        if asked is not None:
            ranged.append((asked, response.status, await response.header_value("content-range")))
            kind = await response.header_value("content-type")
            assert kind in ("video/mp4", "video/x-matroska"), (url, kind)
    assert ranged, f"no range request for {url}"
    for asked, status, answered in ranged:
        start = re.fullmatch(r"bytes=(\d+)-(\d*)", asked)
        assert start is not None, asked
        assert status == 206, (asked, status)
        assert answered is not None
        assert re.fullmatch(rf"bytes {start.group(1)}-\d+/{size}", answered), (asked, answered)


async def download(page: Page, file_id: int) -> tuple[bytes, str]:
    """Click the file's download link: (the downloaded bytes, its suggested name)."""
    async with page.expect_download() as info:
        await page.click(f"#file-{file_id} a.archive-download")
    made = await info.value
    assert await made.failure() is None
    path = await made.path()
    return path.read_bytes(), made.suggested_filename


async def test_an_archivist_finds_plays_seeks_downloads_and_verifies(  # type: ignore[no-untyped-def]
    node, new_page
) -> None:
    await node.account("luu-tru", "archivist")
    wanted, (track_id, composite_id) = await make_recording(
        node,
        "giao-ban-thuy-loi",
        title="Giao ban thủy lợi tháng 3",
        keywords="thủy lợi, mùa khô",
        record_code="HS-2026-031",
        files=[(TRACK, None, "video")],
        seconds=SECONDS,
        composite=COMPOSITE,
    )
    other, _ = await make_recording(
        node, "giao-ban-y-te", title="Giao ban y tế", keywords="dịch bệnh"
    )
    page = await new_page()
    responses: list[Response] = []

    def seen(response: Response) -> None:
        responses.append(response)

    page.on("response", seen)

    # Sign in, open the archive from the header, search by a keyword of the metadata.
    await sign_in(page, node, "luu-tru")
    await page.click("a.archive-link")
    await page.wait_for_selector("#archive-search")
    assert await page.locator("#archive-results tr[data-recording]").count() == 2
    await page.fill("#archive-keyword", "thủy lợi")
    await page.click("#archive-search [type=submit]")
    await page.wait_for_url(re.compile(r"/archive\?.*keyword="))
    rows = page.locator("#archive-results tr[data-recording]")
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-recording") == str(wanted)
    assert await page.locator(f'tr[data-recording="{other}"]').count() == 0

    # The recording's page and its players.
    await rows.first.locator("a.archive-title").click()
    await page.wait_for_url(f"**/archive/{wanted}")
    assert await page.inner_text("#recording-title") == "Giao ban thủy lợi tháng 3"
    root = recordings_root(node)
    for file_id, relative, width in ((track_id, TRACK, 160), (composite_id, COMPOSITE, 320)):
        video = await page.wait_for_selector(f"#file-{file_id} video.archive-player")
        assert video is not None
        size = (root / relative).stat().st_size
        await play_and_seek(page, video, responses, width=width, size=size)

    # Downloads: the bytes whose SHA-256 the page shows, and those of the file on disk.
    for file_id, relative in ((track_id, TRACK), (composite_id, COMPOSITE)):
        shown = (await page.inner_text(f"#file-{file_id} code.archive-sha")).strip()
        data, name = await download(page, file_id)
        assert hashlib.sha256(data).hexdigest() == shown
        assert data == (root / relative).read_bytes()
        assert name.startswith("HS-2026-031 - ") and name.endswith(Path(relative).suffix)

    # Verify: every checksum matches; after a byte of the track changes, it says which.
    await page.click("#verify-form [type=submit]")
    result = await page.wait_for_selector("#verify-result")
    assert result is not None
    assert await result.get_attribute("class") == "archive-ok"
    assert "mọi tệp khớp mã kiểm tra SHA-256" in await result.inner_text()
    track = root / TRACK
    changed = bytearray(track.read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    track.write_bytes(bytes(changed))
    await page.click("#verify-form [type=submit]")
    await page.wait_for_selector(f'#verify-result li[data-file="{track_id}"]')
    assert (
        await page.get_attribute(f'#verify-result li[data-file="{track_id}"]', "data-reason")
        == "changed"
    )
    assert await page.locator(f'#verify-result li[data-file="{composite_id}"]').count() == 0
