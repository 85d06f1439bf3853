"""Admin pages of the site tree: the tree (search, counts per level), adding, editing and
deleting a site, and importing a CSV file.

Admins only: anyone else gets the 403 page (signed out: the sign-in page). Every form carries
the CSRF token. A CSV upload is checked whole (server.site_csv): with any problem the page lists
them all by line and nothing is imported. Limit: the upload is read in memory, at most
`MAX_CSV_BYTES`; a body above the node's request limit (1 MiB) is refused by aiohttp with a
plain 413 before this module sees it.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from server.auth import require_account
from server.errors import GiaoBanError
from server.pages import STRINGS_KEY, Strings, _render, request_lang
from server.room_pages import Problems
from server.site_csv import CODE_RE, MAX_CODE_LENGTH, MAX_NAME_LENGTH, CsvRejected, parse_level
from server.sites import (
    SiteInUse,
    add_site,
    decode_csv,
    delete_site,
    filter_tree,
    find_site,
    import_sites,
    level_counts,
    parse_site_csv,
    site_tree,
    site_usage,
    stored_parents,
    update_site,
)
from server.store.db import Database
from server.store.models import Role, SiteLevel

log = logging.getLogger(__name__)

MAX_CSV_BYTES = 512 * 1024  # the whole country with its old districts is ~300 KiB
MAX_QUERY = 100
MAX_FIELD_INPUT = 400
NOTICE_FIELDS = ("added", "updated", "unchanged")


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


def _field(form: MultiDictProxy[Any], name: str, limit: int = MAX_FIELD_INPUT) -> str:
    value = form.get(name)
    return value[:limit].strip() if isinstance(value, str) else ""


def _code_in_url(request: web.Request) -> str | None:
    code = request.match_info["code"]
    return code if len(code) <= MAX_CODE_LENGTH and CODE_RE.fullmatch(code) else None


def _missing(request: web.Request, code: str) -> web.Response:
    return _render(request, "sites_missing.html", "sites", status=404, code=code)


def _levels() -> list[str]:
    return [level.value for level in SiteLevel]


# --- GET /admin/sites, POST /admin/sites/import -----------------------------------------------


async def _tree_page(
    request: web.Request, *, csv_problems: list[Any] | None = None, status: int = 200
) -> web.Response:
    query = request.query.get("q", "")[:MAX_QUERY].strip()
    async with _database(request).session() as db:
        tree = await site_tree(db)
    counts = level_counts(tree)
    shown = filter_tree(tree, query) if query else tree
    notice = {name: request.query.get(name, "") for name in NOTICE_FIELDS}
    imported = all(value.isdigit() for value in notice.values())
    return _render(
        request,
        "sites.html",
        "sites",
        status=status,
        tree=shown,
        query=query,
        counts=[(level.value, counts[level]) for level in SiteLevel],
        total=sum(counts.values()),
        imported=notice if imported else None,
        deleted=request.query.get("deleted", "")[:MAX_CODE_LENGTH],
        csv_problems=csv_problems or [],
        max_csv_kib=MAX_CSV_BYTES // 1024,
    )


async def sites_page(request: web.Request) -> web.Response:
    """``GET /admin/sites``: the tree, counts per level; ``?q=`` keeps the sites whose name or
    code contains it (diacritics ignored) with their parents."""
    require_account(request, Role.ADMIN)
    return await _tree_page(request)


def _csv_problem(request: web.Request, key: str, **values: Any) -> list[dict[str, str]]:
    strings: Strings = request.app[STRINGS_KEY]
    lang, _chosen = request_lang(request)
    other = next(code for code in strings if code != lang)

    def text(language: str) -> str:
        found = strings[language].get(key, key)
        for name, value in values.items():
            found = found.replace("{" + name + "}", str(value))
        return found

    return [{"text": text(lang), "alt": text(other)}]


async def import_submit(request: web.Request) -> web.StreamResponse:
    """``POST /admin/sites/import`` (multipart, field ``file``): import the CSV and go back to
    the tree with the counts; the tree page with every problem (status 400) otherwise."""
    account = require_account(request, Role.ADMIN)
    form = await request.post()  # already read (and bounded) by the CSRF check
    upload = form.get("file")
    if not isinstance(upload, FileField):
        return await _tree_page(
            request, csv_problems=_csv_problem(request, "sites.import_no_file"), status=400
        )
    data = upload.file.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        problems = _csv_problem(request, "sites.import_too_large", max=MAX_CSV_BYTES // 1024)
        return await _tree_page(request, csv_problems=problems, status=413)
    lang, _chosen = request_lang(request)
    other = "en" if lang == "vi" else "vi"
    try:
        text = decode_csv(data)
        async with _database(request).session() as db, db.begin():
            rows = parse_site_csv(text, await stored_parents(db))
            result = await import_sites(db, rows)
    except CsvRejected as exc:
        log.info("account %d: site file refused, %d problems", account.id, len(exc.problems))
        problems = [{"text": p.line_text(lang), "alt": p.line_text(other)} for p in exc.problems]
        return await _tree_page(request, csv_problems=problems, status=400)
    log.info("account %d imported a site file: %d sites", account.id, result.total)
    counts = {name: getattr(result, name) for name in NOTICE_FIELDS}
    raise web.HTTPSeeOther("/admin/sites?" + urlencode(counts))


# --- GET/POST /admin/sites/new ----------------------------------------------------------------


def _new_form(
    request: web.Request,
    values: dict[str, str],
    problems: Problems | None = None,
    status: int = 200,
) -> web.Response:
    return _render(
        request,
        "sites_new.html",
        "sites",
        status=status,
        form=values,
        problems=problems.items if problems else [],
        levels=_levels(),
        max_code=MAX_CODE_LENGTH,
        max_name=MAX_NAME_LENGTH,
    )


async def new_site_page(request: web.Request) -> web.Response:
    """``GET /admin/sites/new``: the form; ``?parent=CODE`` fills in the parent."""
    require_account(request, Role.ADMIN)
    parent = request.query.get("parent", "")[:MAX_CODE_LENGTH]
    level = SiteLevel.COMMUNE.value if parent else SiteLevel.PROVINCE.value
    return _new_form(request, {"code": "", "name": "", "level": level, "parent": parent})


def _check_form(problems: Problems, values: dict[str, str], *, with_code: bool) -> None:
    if with_code:
        if not values["code"]:
            problems.add("sites.error_code_required")
        elif len(values["code"]) > MAX_CODE_LENGTH or not CODE_RE.fullmatch(values["code"]):
            problems.add("sites.error_code", max=MAX_CODE_LENGTH)
    if not values["name"]:
        problems.add("sites.error_name_required")
    elif len(values["name"]) > MAX_NAME_LENGTH:
        problems.add("sites.error_name_long", max=MAX_NAME_LENGTH)
    if parse_level(values["level"]) is None:
        problems.add("sites.error_level")


async def new_site_submit(request: web.Request) -> web.StreamResponse:
    """``POST /admin/sites/new``: add the site and open it; the form with the errors else."""
    account = require_account(request, Role.ADMIN)
    form = await request.post()
    values = {name: _field(form, name) for name in ("code", "name", "level", "parent")}
    problems = Problems(request)
    _check_form(problems, values, with_code=True)
    if problems:
        return _new_form(request, values, problems, status=400)
    try:
        async with _database(request).session() as db, db.begin():
            site = await add_site(
                db,
                values["code"],
                values["name"],
                values["level"],
                parent_code=values["parent"] or None,
            )
            code = site.code
    except GiaoBanError as exc:  # the code taken, the parent unknown
        problems.add_error(exc)
        return _new_form(request, values, problems, status=400)
    log.info("account %d added site %s", account.id, code)
    raise web.HTTPSeeOther(f"/admin/sites/{quote(code)}?saved=1")


# --- GET/POST /admin/sites/{code} -------------------------------------------------------------


async def _edit_form(
    request: web.Request,
    code: str,
    values: dict[str, str] | None = None,
    problems: Problems | None = None,
    status: int = 200,
) -> web.Response:
    async with _database(request).session() as db:
        site = await find_site(db, code)
        if site is None:
            return _missing(request, code)
        children, accounts, invitations = await site_usage(db, site)
        parents = await stored_parents(db)
    if values is None:
        values = {"name": site.name, "level": site.level.value, "parent": parents[code] or ""}
    return _render(
        request,
        "sites_edit.html",
        "sites",
        status=status,
        code=code,
        form=values,
        problems=problems.items if problems else [],
        levels=_levels(),
        usage={"children": children, "accounts": accounts, "invitations": invitations},
        saved=request.query.get("saved") == "1" and not problems,
        max_name=MAX_NAME_LENGTH,
    )


async def edit_site_page(request: web.Request) -> web.Response:
    """``GET /admin/sites/{code}``: the site's form, what refers to it, the delete button."""
    require_account(request, Role.ADMIN)
    code = _code_in_url(request)
    if code is None:
        return _missing(request, request.match_info["code"][:MAX_CODE_LENGTH])
    return await _edit_form(request, code)


async def edit_site_submit(request: web.Request) -> web.StreamResponse:
    """``POST /admin/sites/{code}``: ``action=save`` changes name, level and parent (empty:
    none); ``action=delete`` deletes it, or shows why it cannot be deleted (status 409)."""
    account = require_account(request, Role.ADMIN)
    code = _code_in_url(request)
    if code is None:
        return _missing(request, request.match_info["code"][:MAX_CODE_LENGTH])
    form = await request.post()
    problems = Problems(request)
    if _field(form, "action") == "delete":
        try:
            async with _database(request).session() as db, db.begin():
                await delete_site(db, code)
        except SiteInUse as exc:
            problems.add(
                "sites.delete_refused",
                children=exc.children,
                accounts=exc.accounts,
                invitations=exc.invitations,
            )
            return await _edit_form(request, code, problems=problems, status=409)
        except GiaoBanError as exc:
            problems.add_error(exc)
            return await _edit_form(request, code, problems=problems, status=404)
        log.info("account %d deleted site %s", account.id, code)
        raise web.HTTPSeeOther("/admin/sites?" + urlencode({"deleted": code}))
    values = {name: _field(form, name) for name in ("name", "level", "parent")}
    _check_form(problems, values, with_code=False)
    if problems:
        return await _edit_form(request, code, values, problems, status=400)
    try:
        async with _database(request).session() as db, db.begin():
            await update_site(
                db, code, name=values["name"], level=values["level"], parent_code=values["parent"]
            )
    except GiaoBanError as exc:  # a loop, an unknown parent
        problems.add_error(exc)
        return await _edit_form(request, code, values, problems, status=400)
    log.info("account %d updated site %s", account.id, code)
    raise web.HTTPSeeOther(f"/admin/sites/{quote(code)}?saved=1")


def setup_site_pages(app: web.Application) -> None:
    """Register the /admin/sites pages on `app`."""
    app.router.add_get("/admin/sites", sites_page, name="sites")
    # Before /admin/sites/{code}: these two paths are pages, not site codes.
    app.router.add_get("/admin/sites/new", new_site_page, name="site_new")
    app.router.add_post("/admin/sites/new", new_site_submit)
    app.router.add_post("/admin/sites/import", import_submit, name="sites_import")
    app.router.add_get("/admin/sites/{code}", edit_site_page, name="site_edit")
    app.router.add_post("/admin/sites/{code}", edit_site_submit)
