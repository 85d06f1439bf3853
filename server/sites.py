"""The site tree in the store: provinces, communes and whatever an operator puts between them.

Two ways in: `import_province` loads a province and its communes/wards from the
`vietnam-provinces` package (the two-level structure after the July 2025 merger, official
zero-padded codes), and `parse_site_csv` (server.site_csv) + `import_sites` load an operator's
own tree, with districts or anything else in between. Pages and the CLI edit it with
`add_site`, `update_site`, `delete_site` and show it with `site_tree`.

Store functions take an `AsyncSession` and flush but never commit: the caller owns the
transaction (`async with db.session() as s, s.begin(): ...`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from vietnam_provinces import Province, ProvinceCode, Ward
from vietnam_provinces import __version__ as PACKAGE_VERSION

from server.errors import AlreadyExists, BadRequest, Conflict, NotFound
from server.site_csv import (
    MAX_SITE_DEPTH,
    CsvRejected,
    Problem,
    SiteRow,
    clean_name,
    code_problems,
    decode_csv,
    dependency_order,
    fold,
    name_problems,
    parse_level,
    parse_site_csv,
    tree_problems,
)
from server.store.models import Account, RoomInvite, Site, SiteLevel

__all__ = [
    "CsvRejected",
    "Division",
    "ImportResult",
    "Problem",
    "SiteInUse",
    "SiteNode",
    "SiteRow",
    "add_site",
    "decode_csv",
    "delete_site",
    "import_province",
    "import_sites",
    "parse_site_csv",
    "site_tree",
    "update_site",
]

log = logging.getLogger(__name__)

PROVINCES_COMMAND = "giaoban sites provinces"


class SiteInUse(Conflict):
    """A site that cannot be deleted: other sites, accounts or room invitations refer to it."""

    message_vi = "Không xoá được đơn vị đang được dùng"
    message_en = "The site is in use and cannot be deleted"

    def __init__(self, code: str, children: int, accounts: int, invitations: int) -> None:
        self.site_code = code  # not `code`: that is the error's stable wire code
        self.children = children
        self.accounts = accounts
        self.invitations = invitations
        super().__init__(
            f"site {code!r} has {children} child sites, {accounts} accounts and "
            f"{invitations} room invitations; move or remove them first"
        )


@dataclass
class ImportResult:
    """What an import did, counted by site."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged

    def __str__(self) -> str:
        return (
            f"thêm {self.added}, cập nhật {self.updated}, giữ nguyên {self.unchanged} / "
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}"
        )


@dataclass
class SiteNode:
    """A site in the tree as shown: its children ordered by code."""

    code: str
    name: str
    level: SiteLevel
    parent_code: str | None
    children: list[SiteNode] = field(default_factory=list)

    def count(self) -> int:
        """This site and every site under it."""
        return 1 + sum(child.count() for child in self.children)


@dataclass(frozen=True)
class Division:
    """A province or a commune/ward of the `vietnam-provinces` package."""

    code: str
    name: str
    division_type: str  # "tỉnh", "thành phố trung ương", "xã", "phường", "đặc khu"


# --- the tree as shown ---------------------------------------------------------------------


def build_tree(sites: Iterable[tuple[str, str, SiteLevel, str | None]]) -> list[SiteNode]:
    """Nested nodes from (code, name, level, parent code) rows, every level ordered by code; a
    site whose parent is missing is shown as a root."""
    nodes = {code: SiteNode(code, name, level, parent) for code, name, level, parent in sites}
    roots: list[SiteNode] = []
    for node in nodes.values():
        parent = nodes.get(node.parent_code) if node.parent_code is not None else None
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.code)
    return sorted(roots, key=lambda n: n.code)


def filter_tree(nodes: Sequence[SiteNode], query: str) -> list[SiteNode]:
    """The sites whose name or code contains `query` (case and diacritics ignored), with their
    ancestors for context and, under a match, everything below it."""
    needle = fold(query)
    if not needle:
        return list(nodes)
    kept: list[SiteNode] = []
    for node in nodes:
        if needle in fold(node.name) or needle in node.code.lower():
            kept.append(node)
            continue
        children = filter_tree(node.children, query)
        if children:
            kept.append(
                SiteNode(node.code, node.name, node.level, node.parent_code, children=children)
            )
    return kept


def level_counts(nodes: Iterable[SiteNode]) -> dict[SiteLevel, int]:
    """How many sites of each level the tree holds (every level present, zero included)."""
    counts = dict.fromkeys(SiteLevel, 0)
    stack = list(nodes)
    while stack:
        node = stack.pop()
        counts[node.level] += 1
        stack.extend(node.children)
    return counts


# --- the vietnam-provinces package ------------------------------------------------------------


def _official_code(member: IntEnum, width: int) -> str:
    # The package's enum names carry the official zero-padded code (P_01, W_00070); its values
    # are plain ints. The name is used as given; the padding is only a fallback.
    digits = member.name.partition("_")[2]
    return digits if digits.isdigit() else f"{int(member):0{width}d}"


def package_provinces() -> list[Division]:
    """Every province and centrally-run city of the package, by code."""
    found = [
        Division(_official_code(p.code, 2), p.name, p.division_type.value)
        for p in Province.iter_all()
    ]
    return sorted(found, key=lambda d: d.code)


def package_province(code: str) -> tuple[Division, list[Division]]:
    """The province with the official `code` (``01`` or ``1``) and its communes/wards by code;
    NotFound naming the code otherwise."""
    text = code.strip()
    try:
        province = Province.from_code(ProvinceCode(int(text)))
    except ValueError:
        raise NotFound(
            f"no province with code {code!r} in vietnam-provinces {PACKAGE_VERSION} "
            f"(2025 structure); `{PROVINCES_COMMAND}` lists the codes"
        ) from None
    communes = [
        Division(_official_code(w.code, 5), w.name, w.division_type.value)
        for w in Ward.iter_by_province(province.code)
    ]
    head = Division(_official_code(province.code, 2), province.name, province.division_type.value)
    return head, sorted(communes, key=lambda d: d.code)


# --- the store --------------------------------------------------------------------------------


async def _all_sites(db: AsyncSession) -> list[Site]:
    return list((await db.execute(select(Site).order_by(Site.code))).scalars())


def _parent_codes(sites: Sequence[Site]) -> dict[str, str | None]:
    code_of = {site.id: site.code for site in sites}
    return {
        site.code: code_of.get(site.parent_id) if site.parent_id is not None else None
        for site in sites
    }


async def stored_parents(db: AsyncSession) -> dict[str, str | None]:
    """Code → parent code of every stored site (what `parse_site_csv` checks against)."""
    return _parent_codes(await _all_sites(db))


async def find_site(db: AsyncSession, code: str) -> Site | None:
    return (await db.execute(select(Site).where(Site.code == code))).scalar_one_or_none()


async def get_site(db: AsyncSession, code: str) -> Site:
    """The site with `code`; NotFound otherwise."""
    site = await find_site(db, code)
    if site is None:
        raise NotFound(f"no site with code {code!r}")
    return site


async def import_sites(db: AsyncSession, rows: Sequence[SiteRow]) -> ImportResult:
    """Add or update (by code) every site of `rows`, parents first. CsvRejected, with nothing
    written, when a parent exists nowhere or the result would loop; a row without a parent
    makes that site a root."""
    sites = await _all_sites(db)
    parents = _parent_codes(sites)
    problems = tree_problems(rows, parents)
    if problems:
        raise CsvRejected(problems)
    by_code = {site.code: site for site in sites}
    result = ImportResult()
    for row in dependency_order(rows):
        parent = by_code[row.parent_code] if row.parent_code is not None else None
        site = by_code.get(row.code)
        if site is None:
            site = Site(code=row.code, name=row.name, level=row.level, parent=parent)
            db.add(site)
            by_code[row.code] = site
            result.added += 1
            continue
        if (site.name, site.level, parents.get(row.code)) == (row.name, row.level, row.parent_code):
            result.unchanged += 1
            continue
        site.name = row.name
        site.level = row.level
        site.parent = parent
        result.updated += 1
    try:
        await db.flush()
    except IntegrityError:  # another writer added one of these codes since the read
        raise AlreadyExists("a site code was added meanwhile; import again") from None
    log.info(
        "sites imported: %d added, %d updated, %d unchanged",
        result.added,
        result.updated,
        result.unchanged,
    )
    return result


async def import_province(
    db: AsyncSession, province_code: str, *, parent_code: str | None = None
) -> ImportResult:
    """The province `province_code` (level province) and all its communes/wards (level
    commune) from the `vietnam-provinces` package, with their official codes.

    Idempotent: names are updated and missing sites added, nothing duplicated. Without
    `parent_code` the province keeps the parent it has; a commune the operator has put under a
    site inside this province (a district) stays there, any other is put under the province."""
    head, communes = package_province(province_code)
    sites = await _all_sites(db)
    parents = _parent_codes(sites)
    if parent_code is not None and parent_code not in parents:
        raise NotFound(f"no site with code {parent_code!r} to put the province under")
    province_parent = parent_code if parent_code is not None else parents.get(head.code)
    inside = _descendants(parents, head.code) | {head.code}
    rows = [SiteRow(head.code, clean_name(head.name), SiteLevel.PROVINCE, province_parent)]
    for commune in communes:
        current = parents.get(commune.code)
        parent = current if current is not None and current in inside else head.code
        rows.append(SiteRow(commune.code, clean_name(commune.name), SiteLevel.COMMUNE, parent))
    log.info("importing province %s with %d communes", head.code, len(communes))
    try:
        return await import_sites(db, rows)
    except CsvRejected as exc:  # e.g. --parent names a site below the province: no file lines
        raise BadRequest("; ".join(problem.text() for problem in exc.problems)) from None


def _descendants(parents: Mapping[str, str | None], code: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    found: set[str] = set()
    stack = [code]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


async def site_tree(db: AsyncSession) -> list[SiteNode]:
    """The whole stored tree, roots and children ordered by code."""
    sites = await _all_sites(db)
    parents = _parent_codes(sites)
    return build_tree((s.code, s.name, s.level, parents[s.code]) for s in sites)


def _as_level(level: SiteLevel | str) -> SiteLevel:
    found = parse_level(level) if isinstance(level, str) else level
    if found is None:
        choices = ", ".join(member.value for member in SiteLevel)
        raise BadRequest(f"level must be one of {choices} (got {level!r})")
    return found


def _checked(problems: list[Problem]) -> None:
    if problems:
        raise BadRequest("; ".join(p.text() for p in problems))


async def add_site(
    db: AsyncSession,
    code: str,
    name: str,
    level: SiteLevel | str,
    *,
    parent_code: str | None = None,
) -> Site:
    """A new site; AlreadyExists when the code is taken, NotFound for an unknown parent."""
    code = code.strip()
    name = clean_name(name)
    _checked(code_problems(code, 0) + name_problems(name, 0))
    site_level = _as_level(level)
    if await find_site(db, code) is not None:
        raise AlreadyExists(f"site code {code!r} is taken")
    parent = await get_site(db, parent_code) if parent_code else None
    if parent is not None and _depth(await stored_parents(db), parent.code) >= MAX_SITE_DEPTH:
        raise BadRequest(f"the tree would be deeper than {MAX_SITE_DEPTH} levels")
    site = Site(code=code, name=name, level=site_level, parent=parent)
    db.add(site)
    try:
        await db.flush()
    except IntegrityError:  # another writer took the code since the check
        raise AlreadyExists(f"site code {code!r} is taken") from None
    log.info("site %d (%s) added under %s", site.id, code, parent_code)
    return site


async def update_site(
    db: AsyncSession,
    code: str,
    *,
    name: str | None = None,
    parent_code: str | None = None,
    level: SiteLevel | str | None = None,
) -> Site:
    """Change a site's name, level or parent (None: unchanged; ``""`` as `parent_code`: make it
    a root). BadRequest when the new parent is the site itself or below it."""
    site = await get_site(db, code)
    if name is not None:
        cleaned = clean_name(name)
        _checked(name_problems(cleaned, 0))
        site.name = cleaned
    if level is not None:
        site.level = _as_level(level)
    if parent_code is not None:
        if parent_code == "":
            site.parent_id = None
        else:
            parent = await get_site(db, parent_code)
            parents = await stored_parents(db)
            if parent.code == code or parent.code in _descendants(parents, code):
                raise BadRequest(
                    f"site {parent.code!r} is {code!r} itself or below it: it cannot be its parent"
                )
            depth = 1 + _depth(parents, parent.code) + _height(parents, code)
            if depth > MAX_SITE_DEPTH:
                raise BadRequest(f"the tree would be deeper than {MAX_SITE_DEPTH} levels")
            site.parent_id = parent.id
    await db.flush()
    log.info("site %d (%s) updated", site.id, code)
    return site


def _depth(parents: Mapping[str, str | None], code: str) -> int:
    depth, current = 1, parents.get(code)
    while current is not None and depth <= MAX_SITE_DEPTH:
        depth, current = depth + 1, parents.get(current)
    return depth


def _height(parents: Mapping[str, str | None], code: str) -> int:
    # Levels from `code` down to its deepest descendant, `code` excluded.
    return max(
        (_depth(parents, d) - _depth(parents, code) for d in _descendants(parents, code)), default=0
    )


async def site_usage(db: AsyncSession, site: Site) -> tuple[int, int, int]:
    """How many child sites, accounts and room invitations refer to `site`."""
    children = await db.scalar(select(func.count()).where(Site.parent_id == site.id))
    accounts = await db.scalar(select(func.count()).where(Account.site_id == site.id))
    invitations = await db.scalar(select(func.count()).where(RoomInvite.site_id == site.id))
    return int(children or 0), int(accounts or 0), int(invitations or 0)


async def delete_site(db: AsyncSession, code: str) -> None:
    """Delete a site; SiteInUse when sites, accounts or room invitations still refer to it
    (room invitations would otherwise vanish with it silently)."""
    site = await get_site(db, code)
    children, accounts, invitations = await site_usage(db, site)
    if children or accounts or invitations:
        raise SiteInUse(code, children, accounts, invitations)
    await db.delete(site)
    await db.flush()
    log.info("site %d (%s) deleted", site.id, code)


def subtree(nodes: Sequence[SiteNode], code: str) -> list[SiteNode]:
    """The node `code` (with everything under it) as a one-root tree; NotFound otherwise."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.code == code:
            return [node]
        stack.extend(node.children)
    raise NotFound(f"no site with code {code!r}")
