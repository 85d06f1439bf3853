"""The site tree in the store, on SQLite and PostgreSQL: package import, CSV import, edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from vietnam_provinces import Province, ProvinceCode, Ward

from server import sites
from server.accounts import create_account
from server.errors import AlreadyExists, BadRequest, NotFound
from server.room_records import create_room
from server.site_csv import CsvRejected, parse_site_csv
from server.store.db import Database
from server.store.models import Site, SiteLevel

LAI_CHAU = "12"  # the smallest province of the 2025 structure (38 communes and wards)
PASSWORD = "mật khẩu đủ dài"


async def site_count(database: Database) -> int:
    async with database.session() as db:
        return int(await db.scalar(select(func.count()).select_from(Site)) or 0)


async def parents(database: Database) -> dict[str, str | None]:
    async with database.session() as db:
        return await sites.stored_parents(db)


async def test_import_a_province_from_the_package(database: Database) -> None:
    wards = list(Ward.iter_by_province(ProvinceCode(12)))
    async with database.session() as db, db.begin():
        result = await sites.import_province(db, LAI_CHAU)
    assert (result.added, result.updated, result.unchanged) == (1 + len(wards), 0, 0)

    async with database.session() as db:
        tree = await sites.site_tree(db)
    [province] = tree
    assert (province.code, province.level) == ("12", SiteLevel.PROVINCE)
    assert province.name == Province.from_code(ProvinceCode(12)).name
    assert len(province.children) == len(wards)
    assert {child.level for child in province.children} == {SiteLevel.COMMUNE}
    # Official five-digit codes, leading zeros kept; names as the package gives them.
    by_code = {child.code: child.name for child in province.children}
    assert by_code == {f"{int(w.code):05d}": w.name for w in wards}
    assert all(len(code) == 5 for code in by_code)
    assert [child.code for child in province.children] == sorted(by_code)

    # Again: nothing duplicated; a renamed commune gets its official name back.
    first = province.children[0].code
    async with database.session() as db, db.begin():
        await sites.update_site(db, first, name="Tên cũ")
    async with database.session() as db, db.begin():
        again = await sites.import_province(db, "12")
    assert (again.added, again.updated, again.unchanged) == (0, 1, len(wards))
    assert await site_count(database) == 1 + len(wards)


async def test_import_under_a_parent_and_keep_districts(database: Database) -> None:
    async with database.session() as db, db.begin():
        await sites.add_site(db, "VN", "Trung ương", "central")
        await sites.import_province(db, "12", parent_code="VN")
    assert (await parents(database))["12"] == "VN"
    # The operator puts a district between the province and one commune; a re-import (without
    # --parent) keeps both the province's parent and that district.
    async with database.session() as db, db.begin():
        rows = parse_site_csv(
            "code,name,level,parent_code\n"
            "H1,Huyện Phong Thổ,huyện,12\n"
            "03388,Phường Đoàn Kết,xã,H1\n"
        )
        await sites.import_sites(db, rows)
        await sites.import_province(db, "12")
    stored = await parents(database)
    assert (stored["12"], stored["H1"], stored["03388"], stored["03390"]) == (
        "VN",
        "12",
        "H1",
        "12",
    )

    with pytest.raises(BadRequest, match="loop"):  # under one of its own communes
        async with database.session() as db, db.begin():
            await sites.import_province(db, "12", parent_code="03390")
    with pytest.raises(NotFound, match="sites provinces"):
        async with database.session() as db, db.begin():
            await sites.import_province(db, "99")
    with pytest.raises(NotFound, match="NOWHERE"):
        async with database.session() as db, db.begin():
            await sites.import_province(db, "04", parent_code="NOWHERE")


CSV = """\ufeffcode,name,level,parent_code
P,Tỉnh Thử,tỉnh,
H1,Huyện Một,huyện,P
X1,Xã Một,xã,H1
X2,Phường Hai,phường,H1
H2,Huyện Hai,district,P
X3,Xã Ba,commune,H2
"""


async def test_csv_with_districts_and_reimport(database: Database) -> None:
    async with database.session() as db, db.begin():
        result = await sites.import_sites(db, parse_site_csv(CSV, await sites.stored_parents(db)))
    assert (result.added, result.updated, result.unchanged) == (6, 0, 0)
    async with database.session() as db:
        [tree] = await sites.site_tree(db)
    assert [(n.code, n.level) for n in tree.children] == [
        ("H1", SiteLevel.DISTRICT),
        ("H2", SiteLevel.DISTRICT),
    ]
    assert [n.code for n in tree.children[0].children] == ["X1", "X2"]

    # Moving X3 to H1 and renaming it: updated, never duplicated.
    changed = CSV.replace("X3,Xã Ba,commune,H2", "X3,Xã Ba mới,commune,H1")
    async with database.session() as db, db.begin():
        again = await sites.import_sites(db, parse_site_csv(changed))
    assert (again.added, again.updated, again.unchanged) == (0, 1, 5)
    assert (await parents(database))["X3"] == "H1"
    assert await site_count(database) == 6


async def test_csv_refused_whole(database: Database) -> None:
    async with database.session() as db, db.begin():
        await sites.import_sites(db, parse_site_csv(CSV))
    # One good new row, one whose parent exists nowhere, one making a loop with the store.
    bad = "code,name,level,parent_code\nNEW,Xã Mới,xã,P\nX9,Xã Chín,xã,GONE\nP,Tỉnh Thử,tỉnh,X1\n"
    async with database.session() as db:
        existing = await sites.stored_parents(db)
        with pytest.raises(CsvRejected) as caught:
            parse_site_csv(bad, existing)
    assert [(p.line, p.kind) for p in caught.value.problems] == [
        (3, "parent_unknown"),
        (4, "cycle"),
    ]
    # import_sites checks the same against the store itself: rows checked without it.
    with pytest.raises(CsvRejected):
        async with database.session() as db, db.begin():
            await sites.import_sites(db, parse_site_csv(bad))
    assert await site_count(database) == 6


async def test_edit_refuses_loops(database: Database) -> None:
    async with database.session() as db, db.begin():
        await sites.import_sites(db, parse_site_csv(CSV))
    for new_parent in ("X1", "H1"):  # its own child, itself
        with pytest.raises(BadRequest, match="itself or below"):
            async with database.session() as db, db.begin():
                await sites.update_site(db, "H1", parent_code=new_parent)
    with pytest.raises(BadRequest, match="itself or below"):
        async with database.session() as db, db.begin():
            await sites.update_site(db, "P", parent_code="X1")
    async with database.session() as db, db.begin():
        await sites.update_site(db, "X3", parent_code="H1", name="  Xã   Ba  ", level="xã")
        await sites.update_site(db, "H2", parent_code="")
    stored = await parents(database)
    assert (stored["X3"], stored["H2"]) == ("H1", None)
    with pytest.raises(NotFound):
        async with database.session() as db, db.begin():
            await sites.update_site(db, "X3", parent_code="NOWHERE")


async def test_add_site(database: Database) -> None:
    async with database.session() as db, db.begin():
        await sites.add_site(db, "P", "Tỉnh", SiteLevel.PROVINCE)
        site = await sites.add_site(db, "X", " Xã  Một ", "xã", parent_code="P")
        assert (site.name, site.level) == ("Xã Một", SiteLevel.COMMUNE)
    with pytest.raises(AlreadyExists):
        async with database.session() as db, db.begin():
            await sites.add_site(db, "X", "Xã", "xã")
    for code, name, level in (("a b", "Xã", "xã"), ("Y", "", "xã"), ("Y", "Xã", "làng")):
        with pytest.raises(BadRequest):
            async with database.session() as db, db.begin():
                await sites.add_site(db, code, name, level)
    with pytest.raises(NotFound):
        async with database.session() as db, db.begin():
            await sites.add_site(db, "Y", "Xã", "xã", parent_code="NOWHERE")


async def test_delete_refusals(database: Database) -> None:
    async with database.session() as db, db.begin():
        await sites.import_sites(db, parse_site_csv(CSV))
        host = await create_account(db, "chu-tri", PASSWORD, role="host", site_code="X1")
        await create_room(
            db,
            host,
            title="Giao ban",
            starts_at=datetime.now(UTC) + timedelta(days=1),
            duration_minutes=60,
            mode="discussion",
            lobby=False,
            site_codes=["X2"],
            member_usernames=[],
            host_usernames=[],
        )
    for code, counts in (("H1", (2, 0, 0)), ("X1", (0, 1, 0)), ("X2", (0, 0, 1))):
        with pytest.raises(sites.SiteInUse) as caught:
            async with database.session() as db, db.begin():
                await sites.delete_site(db, code)
        refusal = caught.value
        assert (refusal.children, refusal.accounts, refusal.invitations) == counts
        assert (refusal.site_code, refusal.code) == (code, "conflict")
    async with database.session() as db, db.begin():
        await sites.delete_site(db, "X3")
        await sites.delete_site(db, "H2")
    assert await site_count(database) == 4
    with pytest.raises(NotFound):
        async with database.session() as db, db.begin():
            await sites.delete_site(db, "X3")
