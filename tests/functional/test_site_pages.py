"""The site tree pages of a running node: tree, search, add, edit, delete, CSV upload, roles."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from server.app import DATABASE
from server.site_pages import MAX_CSV_BYTES
from server.sites import import_province, stored_parents
from tests.conftest import TEST_PASSWORD, Node

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
GOOD_CSV = (
    "\ufeffcode,name,level,parent_code\r\n"
    "H1,Huyện Phong Thổ,huyện,12\r\n"
    "03388,Phường Đoàn Kết,xã,H1\r\n"
    "NEW,Đội công tác,other,H1\r\n"
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def page(http: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with http.get(url, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, (url, text[:500])
    return html.unescape(text)


async def csrf(http: aiohttp.ClientSession, url: str) -> str:
    match = CSRF_INPUT.search(await page(http, url))
    assert match is not None, f"no csrf_token field in {url}"
    return match.group(1)


async def sign_in(http: aiohttp.ClientSession, node: Node, username: str, role: str) -> None:
    await node.account(username, role)
    token = await csrf(http, node.url + "/login")
    form = {"csrf_token": token, "username": username, "password": TEST_PASSWORD, "next": "/"}
    async with http.post(node.url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def post(
    http: aiohttp.ClientSession, node: Node, path: str, **fields: str
) -> aiohttp.ClientResponse:
    form = {"csrf_token": await csrf(http, node.url + "/admin/sites"), **fields}
    response = await http.post(node.url + path, data=form, allow_redirects=False)
    await response.read()
    return response


async def upload(
    http: aiohttp.ClientSession, node: Node, content: bytes
) -> tuple[aiohttp.ClientResponse, str]:
    form = aiohttp.FormData()
    form.add_field("csrf_token", await csrf(http, node.url + "/admin/sites"))
    form.add_field("file", content, filename="don-vi.csv", content_type="text/csv")
    response = await http.post(node.url + "/admin/sites/import", data=form, allow_redirects=False)
    return response, html.unescape(await response.text())


async def test_tree_search_and_csv_import(node: Node, http: aiohttp.ClientSession) -> None:
    async with node.app[DATABASE].session() as db, db.begin():
        await import_province(db, "12")
    await sign_in(http, node, "quan-tri", "admin")

    tree = await page(http, node.url + "/admin/sites")
    assert 'data-code="12"' in tree and "Lai Châu" in tree
    assert 'data-code="03388"' in tree and "<details open>" in tree
    assert re.search(r'<li data-level="commune"><strong>38</strong>', tree)

    # Search ignores diacritics and keeps the parents.
    found = await page(http, node.url + "/admin/sites?q=doan+ket")
    assert 'data-code="03388"' in found and 'data-code="12"' in found
    assert 'data-code="03390"' not in found
    assert "Không có đơn vị nào khớp" in await page(http, node.url + "/admin/sites?q=zzz")

    # A file with problems: every one listed by line, nothing imported.
    bad = GOOD_CSV + "X1,,xã,H1\r\nX2,Xã Hai,làng,NOWHERE\r\n"
    response, text = await upload(http, node, bad.encode())
    assert response.status == 400
    assert 'id="import-errors"' in text
    assert "dòng 5: thiếu tên đơn vị" in text and "line 5: the name is empty" in text
    assert "dòng 6: cấp làng không hợp lệ" in text
    assert "dòng 6: không có đơn vị cấp trên NOWHERE" in text
    async with node.app[DATABASE].session() as db:
        assert "H1" not in await stored_parents(db)

    # The good file: a district between the province and one of its communes.
    response, _text = await upload(http, node, GOOD_CSV.encode())
    assert response.status == 303
    assert response.headers["Location"] == "/admin/sites?added=2&updated=1&unchanged=0"
    done = await page(http, node.url + response.headers["Location"])
    assert "thêm 2, cập nhật 1, giữ nguyên 0" in done
    async with node.app[DATABASE].session() as db:
        stored = await stored_parents(db)
    assert (stored["H1"], stored["03388"], stored["NEW"]) == ("12", "H1", "H1")

    # Not UTF-8, too large, no file.
    latin1 = "code,name,level,parent_code\nA,Xã,xa,\n".encode("latin-1")
    response, text = await upload(http, node, latin1)
    assert response.status == 400 and "không phải văn bản UTF-8" in text
    response, text = await upload(http, node, b"x" * (MAX_CSV_BYTES + 1))
    assert response.status == 413
    response = await post(http, node, "/admin/sites/import")
    assert response.status == 400


async def test_add_edit_delete(node: Node, http: aiohttp.ClientSession) -> None:
    await sign_in(http, node, "quan-tri", "admin")
    form = await page(http, node.url + "/admin/sites/new")
    assert 'name="code"' in form and 'name="level"' in form

    response = await post(
        http, node, "/admin/sites/new", code="P", name="Tỉnh Thử", level="province"
    )
    assert response.status == 303 and response.headers["Location"] == "/admin/sites/P?saved=1"
    response = await post(
        http, node, "/admin/sites/new", code="X1", name="Xã Một", level="commune", parent="P"
    )
    assert response.status == 303
    # Errors: a taken code, a bad code, no name, an unknown parent.
    response = await post(http, node, "/admin/sites/new", code="X1", name="Xã", level="commune")
    assert response.status == 400 and "X1" in html.unescape(await response.text())
    response = await post(http, node, "/admin/sites/new", code="x y", name="", level="làng")
    text = html.unescape(await response.text())
    assert response.status == 400
    assert "Mã đơn vị chỉ gồm" in text and "Cần nhập tên" in text and "Chọn một cấp" in text
    response = await post(
        http, node, "/admin/sites/new", code="X2", name="Xã", level="commune", parent="NOWHERE"
    )
    assert response.status == 400 and "NOWHERE" in await response.text()

    edit = await page(http, node.url + "/admin/sites/X1?saved=1")
    assert 'value="Xã Một"' in edit and 'value="P"' in edit and 'id="site-saved"' in edit
    response = await post(
        http, node, "/admin/sites/X1", action="save", name="Xã Một mới", level="commune", parent=""
    )
    assert response.status == 303
    async with node.app[DATABASE].session() as db:
        assert (await stored_parents(db))["X1"] is None
    # A loop is refused with the node's message.
    await post(http, node, "/admin/sites/X1", action="save", name="Xã", level="commune", parent="P")
    response = await post(
        http, node, "/admin/sites/P", action="save", name="Tỉnh", level="province", parent="X1"
    )
    assert response.status == 400 and "itself or below" in await response.text()

    # Delete: refused while a site is under it (the reason shown), done once it is empty.
    response = await post(http, node, "/admin/sites/P", action="delete")
    text = html.unescape(await response.text())
    assert response.status == 409
    assert "Không xoá được: còn 1 đơn vị cấp dưới, 0 tài khoản và 0 lời mời họp" in text
    response = await post(http, node, "/admin/sites/X1", action="delete")
    assert response.status == 303 and response.headers["Location"] == "/admin/sites?deleted=X1"
    await page(http, node.url + "/admin/sites/X1", status=404)
    await page(http, node.url + "/admin/sites/a%20b", status=404)


async def test_admins_only(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.get(node.url + "/admin/sites", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith("/login?next=")
    await sign_in(http, node, "chu-tri", "host")
    for path in ("/admin/sites", "/admin/sites/new", "/admin/sites/12"):
        await page(http, node.url + path, status=403)
    response = await post_as_host(http, node)
    assert response.status == 403


async def post_as_host(http: aiohttp.ClientSession, node: Node) -> aiohttp.ClientResponse:
    # The host's CSRF token comes from a page it may open.
    token = await csrf(http, node.url + "/rooms")
    form = {"csrf_token": token, "code": "P", "name": "Tỉnh", "level": "province"}
    response = await http.post(node.url + "/admin/sites/new", data=form, allow_redirects=False)
    await response.read()
    return response


async def test_english(node: Node, http: aiohttp.ClientSession) -> None:
    await sign_in(http, node, "quan-tri", "admin")
    text = await page(http, node.url + "/admin/sites?lang=en")
    assert "Site tree" in text and "No sites yet" in text
