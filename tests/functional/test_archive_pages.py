"""The archive pages of a running node: search, who may see a recording, the player's range
requests, downloads, the access log, verification, metadata and retention (issue 5)."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime

import aiohttp
import av
import pytest

from server.app import DATABASE
from server.attendance import record_entry
from server.errors import NotFound
from server.recordings import (
    access_log,
    get_recording,
    mark_failed,
    start_recording,
    stop_recording,
)
from server.store.models import RecordingAction
from tests.conftest import TEST_PASSWORD, Node
from tests.support.archive import MARCH_1, make_recording, recordings_root

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
ROOM = "giao-ban-tinh"
OTHER_ROOM = "giao-ban-huyen"
# 08:00 Vietnam time on 1 March 2026 (MARCH_1), and 00:30 Vietnam time on 11 March (still 10
# March in UTC).
MARCH_11 = datetime(2026, 3, 10, 17, 30, tzinfo=UTC)

Browser = Callable[[str], Awaitable[aiohttp.ClientSession]]


@pytest.fixture
async def browser(node: Node) -> AsyncIterator[Browser]:
    """Signed-in browsers: `await browser("username")`; every one is closed at the end."""
    sessions: list[aiohttp.ClientSession] = []

    async def open_as(username: str) -> aiohttp.ClientSession:
        # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(http)
        token = await csrf(http, node.url + "/login")
        form = {"csrf_token": token, "username": username, "password": TEST_PASSWORD, "next": "/"}
        async with http.post(node.url + "/login", data=form, allow_redirects=False) as response:
            assert response.status == 303, await response.text()
        return http

    yield open_as
    for http in sessions:
        await http.close()


async def csrf(http: aiohttp.ClientSession, url: str) -> str:
    """The page's csrf_token field (fetching it also sets the CSRF cookie)."""
    async with http.get(url) as response:
        assert response.status == 200, url
        match = CSRF_INPUT.search(await response.text())
    assert match is not None, f"no csrf_token field in {url}"
    return match.group(1)


async def post(
    http: aiohttp.ClientSession, node: Node, page: str, path: str, **fields: str
) -> tuple[int, str, str]:
    """POST a form as the browser does, from `page`: (status, body, Location)."""
    form = {"csrf_token": await csrf(http, node.url + page), **fields}
    async with http.post(node.url + path, data=form, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers.get("Location", "")


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, bytes]:
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, await response.read()


async def actions(node: Node, recording_id: int) -> list[str]:
    """The access log's actions on a recording, oldest first."""
    async with node.app[DATABASE].session() as db:
        entries = await access_log(db, recording_id)
    return [entry.action.value for entry in reversed(entries)]


def listed(page: str) -> set[int]:
    return {int(found) for found in re.findall(r'<tr data-recording="(\d+)"', page)}


# --- search ---------------------------------------------------------------------------------


async def test_archivist_searches_by_title_date_site_and_keyword(
    node: Node, browser: Browser
) -> None:
    await node.account("luu-tru", "archivist")
    march, _ = await make_recording(
        node,
        ROOM,
        title="Giao ban tháng 3 về thủy lợi",
        started=MARCH_1,
        chair=("79", "TP. Hồ Chí Minh"),
        sites=[("26734", "Xã Tân Phú")],
        keywords="thủy lợi, nông nghiệp",
        record_code="HS-2026-001",
    )
    late, _ = await make_recording(
        node,
        OTHER_ROOM,
        title="Họp chuyên đề phòng chống bão",
        started=MARCH_11,
        chair=("26734", "Xã Tân Phú"),
        keywords="bão",
    )
    http = await browser("luu-tru")

    async def search(**query: str) -> set[int]:
        async with http.get(node.url + "/archive", params=query) as response:
            assert response.status == 200, query
            return listed(await response.text())

    assert await search() == {march, late}
    assert await search(text="thủy lợi") == {march}
    assert await search(text="thuy loi") == {march}  # typed without diacritics
    assert await search(text="THÁNG 3") == {march}
    assert await search(text="hs-2026") == {march}
    assert await search(text="không có") == set()
    # Dates are Vietnam dates: 00:30 on 11 March in Vietnam is 10 March in UTC.
    assert await search(**{"from": "2026-03-11", "to": "2026-03-11"}) == {late}
    assert await search(**{"from": "2026-03-01", "to": "2026-03-10"}) == {march}
    assert await search(site="26734") == {march, late}  # a participant, and a chair
    assert await search(site="79") == {march}
    assert await search(keyword="bao") == {late}
    assert await search(keyword="nông nghiệp") == {march}
    assert await search(keyword="nông") == set()  # a whole keyword, not a part of one

    async with http.get(node.url + "/archive", params={"from": "1/3/2026"}) as response:
        assert response.status == 400
        assert "Ngày bắt đầu không hợp lệ" in await response.text()
    async with http.get(node.url + "/archive", params={"text": "thuy", "lang": "en"}) as r:
        page = html.unescape(await r.text())
    assert "Giao ban tháng 3 về thủy lợi" in page
    assert "HS-2026-001" in page and "TP. Hồ Chí Minh" in page
    assert "01/03/2026 08:00:00 – 01/03/2026 08:45:00" in page
    assert "0:45:00" in page and "Ready" in page
    # The header offers the archive to archivists.
    assert 'href="/archive"' in page


async def test_state_shown_while_processing_and_failed(node: Node, browser: Browser) -> None:
    await node.account("luu-tru", "archivist")
    await node.schedule(ROOM)
    async with node.app[DATABASE].session() as db, db.begin():
        recording = await start_recording(db, ROOM, by_account_id=None)
        await stop_recording(db, recording.id, datetime.now(UTC))
        recording.processing_progress = 40
    await node.schedule(OTHER_ROOM)
    async with node.app[DATABASE].session() as db, db.begin():
        broken = await start_recording(db, OTHER_ROOM, by_account_id=None)
        await mark_failed(db, broken.id, "composite: out of disk space")
    http = await browser("luu-tru")
    async with http.get(node.url + "/archive?lang=en") as response:
        page = await response.text()
    assert "Processing 40%" in page
    assert 'Failed</span>: <span class="archive-reason">composite: out of disk space' in page


# --- who may see ----------------------------------------------------------------------------


async def test_only_archivists_admins_and_the_rooms_hosts_see_a_recording(
    node: Node, browser: Browser
) -> None:
    await node.account("thanh-vien", "member")
    await node.account("chu-tri-khac", "host")
    recording, (file_id,) = await make_recording(
        node, ROOM, files=[("r/a.mkv", b"x" * 500, "video")]
    )
    await node.schedule(OTHER_ROOM, host="chu-tri-khac")
    detail = f"{node.url}/archive/{recording}"
    file_url = f"{detail}/files/{file_id}"

    member = await browser("thanh-vien")
    for url in (node.url + "/archive", detail, file_url, file_url + "?download=1"):
        status, body = await get(member, url)
        assert status == 403, url
    assert b"/archive" not in (await get(member, node.url + "/rooms"))[1].split(b"<main")[0]
    status, _, _ = await post(member, node, "/rooms", f"/archive/{recording}/verify")
    assert status == 403

    other_host = await browser("chu-tri-khac")
    status, body = await get(other_host, node.url + "/archive")
    assert status == 200 and listed(body.decode()) == set()
    for url in (detail, file_url, file_url + "?download=1"):
        assert (await get(other_host, url))[0] == 403, url
    # An unknown recording looks the same as one not theirs.
    assert (await get(other_host, f"{node.url}/archive/99999"))[0] == 403

    own_host = await browser("chu-tri")
    status, body = await get(own_host, node.url + "/archive")
    assert status == 200 and listed(body.decode()) == {recording}
    assert (await get(own_host, detail))[0] == 200
    assert (await get(own_host, file_url))[1] == b"x" * 500
    # Hosts see and verify, but the archival metadata is the archivists'.
    assert b'id="metadata-form"' not in (await get(own_host, detail))[1]
    status, _, _ = await post(own_host, node, "/archive", f"/archive/{recording}/metadata")
    assert status == 403
    assert (await get(own_host, node.url + "/archive/retention"))[0] == 403

    await node.account("luu-tru", "archivist")
    archivist = await browser("luu-tru")
    assert (await get(archivist, f"{node.url}/archive/99999"))[0] == 404
    assert (await get(archivist, f"{detail}/files/99999"))[0] == 404


async def test_a_confidential_recording_is_for_archivists_and_admins_only(
    node: Node, browser: Browser
) -> None:
    await node.account("luu-tru", "archivist")
    await node.account("quan-tri", "admin")
    made: dict[str, tuple[int, int]] = {}

    def marker(level: str) -> str:  # in the title and the file: on no page unless shown
        return f"{level}-qx7"

    for level in ("internal", "restricted", "confidential"):
        recording, (file_id,) = await make_recording(
            node,
            ROOM,
            title=f"Giao ban ngân sách {marker(level)}",
            keywords="ngân sách",
            access_level=level,
            files=[(f"{level}/a.mkv", marker(level).encode() * 100, "video")],
        )
        made[level] = recording, file_id
    internal, restricted, confidential = (made[level][0] for level in made)
    everything = {internal, restricted, confidential}

    def urls(level: str) -> list[str]:
        recording, file_id = made[level]
        detail = f"{node.url}/archive/{recording}"
        file_url = f"{detail}/files/{file_id}"
        return [detail, file_url, file_url + "?download=1"]

    async def search(http: aiohttp.ClientSession, **query: str) -> set[int]:
        async with http.get(node.url + "/archive", params=query) as response:
            assert response.status == 200, query
            return listed(await response.text())

    # The room's host: internal and restricted, not confidential (mật).
    host = await browser("chu-tri")
    assert await search(host) == {internal, restricted}
    assert await search(host, text=marker("confidential")) == set()
    assert await search(host, text=marker("restricted")) == {restricted}
    assert await search(host, keyword="ngân sách") == {internal, restricted}
    for level in ("internal", "restricted"):
        for url in urls(level):
            assert (await get(host, url))[0] == 200, url
        assert (await get(host, urls(level)[1]))[1] == marker(level).encode() * 100
    for url in urls("confidential"):
        status, body = await get(host, url)
        assert status == 403, url
        assert marker("confidential").encode() not in body  # not the title, not the file
    status, body, _ = await post(host, node, "/archive", f"/archive/{confidential}/verify")
    assert status == 403 and marker("confidential") not in body
    assert await actions(node, confidential) == []  # a refusal reads nothing, logs nothing

    # Archivists and admins see every level; the archivist is told the rule on the form.
    for who in ("luu-tru", "quan-tri"):
        http = await browser(who)
        assert await search(http) == everything, who
        assert await search(http, text=marker("confidential")) == {confidential}, who
        for url in urls("confidential"):
            assert (await get(http, url))[0] == 200, (who, url)
        file_bytes = (await get(http, urls("confidential")[1]))[1]
        assert file_bytes == marker("confidential").encode() * 100
    archivist = await browser("luu-tru")
    detail = f"{node.url}/archive/{restricted}"
    async with archivist.get(detail) as response:
        page = html.unescape(await response.text())
    assert 'aria-describedby="meta-access-help"' in page
    assert "Mật: chỉ lưu trữ viên và quản trị xem được" in page
    async with archivist.get(detail + "?lang=en") as response:
        page = html.unescape(await response.text())
    assert "Confidential: archivists and admins only" in page

    # The archivist makes the restricted one confidential: the host loses it at once.
    status, _, _ = await post(
        archivist,
        node,
        f"/archive/{restricted}",
        f"/archive/{restricted}/metadata",
        record_code="",
        retention_until="",
        access_level="confidential",
        keywords="ngân sách",
    )
    assert status == 303
    assert await search(host) == {internal}
    for url in urls("restricted"):
        assert (await get(host, url))[0] == 403, url
    assert await search(archivist) == everything


# --- the player, downloads, the access log ----------------------------------------------------


async def test_player_seeks_with_range_requests_and_downloads_are_logged(
    node: Node, browser: Browser
) -> None:
    await node.account("luu-tru", "archivist")
    await node.account("quan-tri", "admin")
    recording, (file_id,) = await make_recording(
        node, ROOM, record_code="HS/2026 đặc biệt", files=[("room/1/an.mkv", None, "video")]
    )
    async with node.app[DATABASE].session() as db, db.begin():
        await record_entry(
            db,
            ROOM,
            account_id=None,
            token_id="t1",
            name="Trần Thị Bình",
            site_code="26734",
            site_name="Xã Tân Phú",
            role="member",
            at=MARCH_1,
        )
    data = (recordings_root(node) / "room/1/an.mkv").read_bytes()
    with av.open(str(recordings_root(node) / "room/1/an.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "vp8"
    url = f"{node.url}/archive/{recording}/files/{file_id}"
    http = await browser("luu-tru")

    async with http.get(f"{node.url}/archive/{recording}") as response:
        page = await response.text()
    assert response.status == 200
    player = f'controls preload="none" src="/archive/{recording}/files/{file_id}">'
    assert f'<video class="archive-player" {player}' in page
    assert f'href="/archive/{recording}/files/{file_id}?download=1"' in page
    assert hashlib.sha256(data).hexdigest() in page
    assert "Trần Thị Bình" in page and "Nguyễn Văn An" in page
    assert await actions(node, recording) == ["view"]

    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/x-matroska"
        assert response.headers["Accept-Ranges"] == "bytes"
        assert "Content-Disposition" not in response.headers
        assert await response.read() == data
    async with http.get(url, headers={"Range": "bytes=100-199"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert await response.read() == data[100:200]
    # A seek is the same playback: not logged again; a playback from the start is.
    assert await actions(node, recording) == ["view", "view"]
    async with http.get(url, headers={"Range": "bytes=0-"}) as response:
        assert response.status == 206
        assert await response.read() == data

    async with http.get(url + "?download=1") as response:
        assert response.status == 200
        disposition = response.headers["Content-Disposition"]
        assert await response.read() == data
    assert disposition.startswith('attachment; filename="HS2026_dac_biet_-_Nguyen_Van_An-video_-_')
    assert "filename*=UTF-8''HS2026%20%C4%91%E1%BA%B7c%20bi%E1%BB%87t" in disposition
    assert await actions(node, recording) == ["view", "view", "view", "download"]

    # Only admins read the log.
    assert (await get(http, node.url + "/archive/access-log"))[0] == 403
    admin = await browser("quan-tri")
    async with admin.get(node.url + "/archive/access-log?lang=en") as response:
        assert response.status == 200
        log_page = html.unescape(await response.text())
    assert log_page.count(f'data-recording="{recording}"') == 4
    assert 'data-action="download"' in log_page and "(luu-tru)" in log_page
    assert "HS/2026 đặc biệt" in log_page and "127.0.0.1" in log_page


async def test_a_file_outside_the_recordings_folder_is_refused(
    node: Node, browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    await node.account("luu-tru", "archivist")
    recording, (file_id,) = await make_recording(
        node, ROOM, files=[("r/link.mkv", b"inside", "video")]
    )
    # A symlink inside the folder that points out of it (a path written by hand, a restore).
    outside = tmp_path_factory.mktemp("outside") / "secret.mkv"
    outside.write_bytes(b"secret")
    link = recordings_root(node) / "r/link.mkv"
    link.unlink()
    link.symlink_to(outside)
    http = await browser("luu-tru")
    status, body = await get(http, f"{node.url}/archive/{recording}/files/{file_id}")
    assert status == 403 and b"secret" not in body


# --- verify ---------------------------------------------------------------------------------


async def test_verify_reports_changed_and_missing_files(node: Node, browser: Browser) -> None:
    await node.account("luu-tru", "archivist")
    recording, (first, second) = await make_recording(
        node,
        ROOM,
        files=[("v/a.mkv", None, "video"), ("v/b.mka", b"opus" * 300, "audio")],
    )
    http = await browser("luu-tru")
    page = f"/archive/{recording}"
    verify = f"/archive/{recording}/verify"

    status, body, _ = await post(http, node, page, verify)
    assert status == 200
    assert 'id="verify-result" class="archive-ok"' in body
    assert '<audio class="archive-player"' in body

    path = recordings_root(node) / "v/a.mkv"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    status, body, _ = await post(http, node, page, verify)
    assert status == 200
    assert f'<li data-file="{first}" data-reason="changed">' in body
    assert "SHA-256 không khớp" in body
    assert f'data-file="{second}"' not in body

    (recordings_root(node) / "v/b.mka").unlink()
    status, body, _ = await post(http, node, page, verify)
    assert f'<li data-file="{first}" data-reason="changed">' in body
    assert f'<li data-file="{second}" data-reason="missing">' in body
    assert (await actions(node, recording)).count("verify") == 3


# --- metadata -------------------------------------------------------------------------------


async def test_archivist_edits_metadata_and_sees_errors(node: Node, browser: Browser) -> None:
    await node.account("luu-tru", "archivist")
    recording, _ = await make_recording(node, ROOM)
    await make_recording(node, OTHER_ROOM, record_code="HS-TAKEN")
    http = await browser("luu-tru")
    page = f"/archive/{recording}"
    path = f"/archive/{recording}/metadata"
    good = {
        "record_code": "HS-2026-07",
        "retention_until": "2036-12-31",
        "access_level": "restricted",
        "keywords": "ngân sách, giao ban",
    }

    status, body, _ = await post(http, node, page, path, **{**good, "retention_until": "31/12"})
    assert status == 400 and "Ngày lưu trữ đến không hợp lệ" in body
    assert 'value="HS-2026-07"' in body  # what was typed is kept
    status, body, _ = await post(http, node, page, path, **{**good, "access_level": "public"})
    assert status == 400 and "access level must be one of" in body
    status, body, _ = await post(http, node, page, path, **{**good, "record_code": "HS-TAKEN"})
    assert status == 400 and "HS-TAKEN" in html.unescape(body)
    status, body, _ = await post(http, node, page, path, **{**good, "keywords": "x" * 60})
    assert status == 400 and "at most 50 characters" in body
    async with node.app[DATABASE].session() as db:
        unchanged = await get_recording(db, recording)
    assert unchanged.record_code is None and unchanged.access_level.value == "internal"

    status, _, location = await post(http, node, page, path, **good)
    assert status == 303 and location == f"/archive/{recording}?saved=1"
    async with http.get(node.url + location) as response:
        body = html.unescape(await response.text())
    assert "Đã lưu thông tin hồ sơ" in body
    assert "HS-2026-07" in body and "31/12/2036" in body and "Hạn chế" in body
    assert "ngân sách" in body
    assert "metadata" in await actions(node, recording)
    async with http.get(node.url + "/archive", params={"keyword": "ngan sach"}) as response:
        assert listed(await response.text()) == {recording}


# --- retention ------------------------------------------------------------------------------


async def test_retention_lists_due_recordings_and_delete_needs_confirmation(
    node: Node, browser: Browser
) -> None:
    await node.account("luu-tru", "archivist")
    await node.account("quan-tri", "admin")
    await node.account("thanh-vien", "member")
    due, _ = await make_recording(
        node,
        ROOM,
        record_code="HS-2015-01",
        retention=date(2020, 1, 1),
        files=[("d/a.mkv", b"a" * 100, "video"), ("d/b.mka", b"b" * 100, "audio")],
    )
    kept, _ = await make_recording(
        node, OTHER_ROOM, record_code="HS-2026-02", retention=date(2099, 1, 1)
    )
    member = await browser("thanh-vien")
    assert (await get(member, node.url + "/archive/retention"))[0] == 403
    http = await browser("luu-tru")
    async with http.get(node.url + "/archive/retention") as response:
        body = await response.text()
    assert response.status == 200
    assert f'id="due-{due}"' in body and f'id="due-{kept}"' not in body
    assert "01/01/2020" in body

    page = "/archive/retention"
    delete = f"/archive/{due}/delete"
    status, body, _ = await post(http, node, page, delete, confirm_code="HS-2015-01")
    assert status == 400 and "hãy đánh dấu ô xác nhận" in body
    status, body, _ = await post(http, node, page, delete, confirm="1", confirm_code="HS-2015")
    assert status == 400 and "hãy gõ đúng mã HS-2015-01" in body
    status, body, _ = await post(
        http, node, page, f"/archive/{kept}/delete", confirm="1", confirm_code="HS-2026-02"
    )
    assert status == 400 and "chưa hết hạn lưu trữ" in body
    assert (recordings_root(node) / "d/a.mkv").exists()
    assert "delete" not in await actions(node, due)

    status, _, location = await post(
        http, node, page, delete, confirm="1", confirm_code="HS-2015-01"
    )
    assert status == 303 and location == "/archive/retention?deleted=HS-2015-01"
    assert not (recordings_root(node) / "d/a.mkv").exists()
    assert not (recordings_root(node) / "d/b.mka").exists()
    async with node.app[DATABASE].session() as db:
        with pytest.raises(NotFound):
            await get_recording(db, due)
        entries = await access_log(db)
    deleted = [e for e in entries if e.action is RecordingAction.DELETE]
    assert len(deleted) == 1 and deleted[0].record_code == "HS-2015-01"
    assert deleted[0].recording_id is None  # the entry outlives the recording
    async with http.get(node.url + location) as response:
        body = await response.text()
    assert "Đã xóa bản ghi hình HS-2015-01" in body and f'id="due-{due}"' not in body

    admin = await browser("quan-tri")
    async with admin.get(node.url + "/archive/access-log") as response:
        assert 'data-action="delete"' in await response.text()
