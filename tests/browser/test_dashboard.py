"""An admin's live dashboard in Chromium follows a commune's participant joining and leaving,
without a reload; and it says so when the node stops answering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.app import DATABASE, SECRET_KEY
from server.invitations import mint_invitation
from server.store.models import Site, SiteLevel
from tests.support.browser import sign_in
from tests.support.peer import Peer


async def add_sites(node) -> None:  # type: ignore[no-untyped-def]
    async with node.app[DATABASE].session() as db, db.begin():
        province = Site(code="P1", name="Tỉnh Một", level=SiteLevel.PROVINCE)
        db.add(province)
        await db.flush()
        for code, name in (("C1", "Xã Đông"), ("C2", "Xã Tây")):
            db.add(Site(code=code, name=name, level=SiteLevel.COMMUNE, parent_id=province.id))


async def test_the_dashboard_follows_a_commune_joining_and_leaving(node, new_page) -> None:  # type: ignore[no-untyped-def]
    await add_sites(node)
    await node.account("quan-tri", "admin")
    await node.schedule("giao-ban-sang")
    page = await new_page()
    await sign_in(page, node, "quan-tri")
    await page.click(".dashboard-link")
    await page.wait_for_url(f"{node.url}/dashboard")

    commune = page.locator('#dash-totals [data-level="commune"]')
    c1 = page.locator('[data-site="C1"] .dash-connected').first
    await page.wait_for_selector('[data-site="C1"] .dash-connected[data-count="0"]')
    assert "0/2 xã" in await commune.inner_text()
    assert await page.get_attribute('[data-site="C1"]', "data-online") == "false"
    # Counted: the marker survives only as long as the page is not reloaded.
    await page.evaluate("() => { window.notReloaded = true; }")

    token = mint_invitation(
        node.app[SECRET_KEY],
        room="giao-ban-sang",
        role="member",
        site="C1",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    async with Peer(node.url, "UBND xã Đông") as peer:
        await peer.join("giao-ban-sang", token)
        await page.wait_for_selector('[data-site="C1"] .dash-connected[data-count="1"]')
        assert "1 người" in await c1.inner_text()
        assert "1/2 xã" in await commune.inner_text()
        assert await page.get_attribute('[data-site="C1"]', "data-online") == "true"
        room = page.locator('#dash-rooms [data-room="giao-ban-sang"]')
        assert "Phòng giao-ban-sang" in await room.inner_text()
        await peer.leave()
        await page.wait_for_selector('[data-site="C1"] .dash-connected[data-count="0"]')
        assert "0/2 xã" in await commune.inner_text()
        await page.wait_for_selector("#dash-no-rooms:not([hidden])")
    assert await page.evaluate("() => window.notReloaded === true")

    # In English after the switch, still without a reload.
    await page.click("#lang-switch")
    await page.wait_for_function(
        "() => document.querySelector('#dash-totals [data-level=\"commune\"]')"
        ".textContent.includes('0/2 communes online')"
    )

    # The node stops answering: the page says since when it is not updating.
    await node.server.close()
    await page.wait_for_selector("#dash-stale:not([hidden])")
    assert "Not updating since" in await page.inner_text("#dash-stale")


async def test_operators_see_whether_recording_workers_run(  # type: ignore[no-untyped-def]
    workers_node, redis_url, redis_prefix, new_page
) -> None:
    """On a cluster whose recordings workers make, the dashboard says how many run, and that
    none does (so recordings cannot start) when the last one falls silent."""
    import redis.asyncio as aioredis

    from recording.jobs import RedisJobQueue

    node = workers_node
    await node.account("quan-tri", "admin")
    page = await new_page()
    await sign_in(page, node, "quan-tri")
    await page.goto(f"{node.url}/dashboard", wait_until="domcontentloaded")
    summary = page.locator("#dash-recorders-summary")
    await page.wait_for_selector('#dash-recorders-summary[data-count="0"]')
    assert await page.is_visible("#dash-recorders")
    assert "Không có máy ghi hình nào đang chạy" in await summary.inner_text()

    client = aioredis.from_url(redis_url)
    queue = RedisJobQueue(client, redis_prefix, dead_after=3)
    try:
        await queue.announce("ghi-hinh-1", {"recordings": "", "capacity": "8"})
        await page.wait_for_selector('#dash-recorders-summary[data-count="1"]')
        assert "1 máy ghi hình đang chạy" in await summary.inner_text()
        item = page.locator('#dash-recorders-list [data-recorder="ghi-hinh-1"]')
        assert "đang chờ việc (nhận được 8 bản ghi cùng lúc)" in await item.inner_text()
        # Silent for longer than dead_after: gone again, without a reload.
        await page.wait_for_selector('#dash-recorders-summary[data-count="0"]', timeout=10_000)
    finally:
        await queue.close()
        await client.aclose()


async def test_a_node_that_records_itself_shows_no_recording_workers(node, new_page) -> None:  # type: ignore[no-untyped-def]
    await node.account("quan-tri", "admin")
    page = await new_page()
    await sign_in(page, node, "quan-tri")
    await page.goto(f"{node.url}/dashboard", wait_until="domcontentloaded")
    await page.wait_for_selector("#dash-nodes tbody tr")
    assert await page.is_hidden("#dash-recorders")
