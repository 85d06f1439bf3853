"""The catalogue's fields: checked and normalised, and folded for search. Pure functions.

Vietnamese text is kept NFC. Search is the same on SQLite and PostgreSQL because neither
database folds Vietnamese case (SQLite's lower() is ASCII only, PostgreSQL's depends on the
collation): `search_text` is folded here and searched with LIKE. A needle typed with
diacritics matches them exactly ("họp" does not find "hợp"); one typed without matches either
("hop" finds both), as people type on a keyboard without a Vietnamese input method.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import PurePosixPath

from server.errors import BadRequest
from server.site_csv import fold
from server.store.models import AccessLevel, Recording

MAX_KEYWORDS = 20
MAX_KEYWORD_LENGTH = 50
MAX_RECORD_CODE_LENGTH = 64
MAX_REASON_LENGTH = 2000
MAX_PATH_LENGTH = 500
# Forms send keywords comma-separated: a keyword has no comma.
KEYWORD_FORBIDDEN = frozenset(",")
# Between keywords in `search_text`. Folding splits on whitespace, which includes U+001F, so
# no folded title, code, keyword or needle contains it: a keyword match cannot straddle two.
KEYWORD_SEPARATOR = "\x1f"

SiteRef = tuple[str, str]
"""A site as the catalogue keeps it: (code, name), a snapshot of the site at the time."""


def nfc(text: str) -> str:
    """`text` in NFC, stripped: the same Vietnamese typed on two systems is the same string."""
    return unicodedata.normalize("NFC", str(text)).strip()


def lower(text: str) -> str:
    """NFC, lower case, runs of whitespace as one space: the accented search form."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def _forms(text: str) -> list[str]:
    """The accented and the unaccented form of `text` (one when they are the same)."""
    accented, plain = lower(text), fold(text)
    return [accented] if accented == plain else [accented, plain]


def needle(text: str) -> str:
    """What `search_text` contains when `text` is in the title, record code or a keyword."""
    # Searching the accented form of what was typed finds both stored forms: a needle without
    # diacritics is its own unaccented form.
    return lower(text)


def search_text(title: str, record_code: str | None, keywords: Sequence[str]) -> str:
    """The folded text `search_recordings` matches: title and record code in both forms, one per
    line, then the keywords between separators (accented, then unaccented), for whole-keyword
    matches."""
    lines = [*_forms(title), *(_forms(record_code) if record_code else [])]
    sep = KEYWORD_SEPARATOR
    lines.append(sep + sep.join(lower(k) for k in keywords) + sep)
    lines.append(sep + sep.join(fold(k) for k in keywords) + sep)
    return "\n".join(lines)


def keyword_needle(keyword: str) -> str:
    """What `search_text` contains when `keyword` is one of its keywords, whole."""
    return KEYWORD_SEPARATOR + needle(keyword) + KEYWORD_SEPARATOR


def keywords_of(recording: Recording) -> list[str]:
    """The recording's keywords, as stored (NFC, in the order given)."""
    loaded = json.loads(recording.keywords or "[]")
    return [str(k) for k in loaded] if isinstance(loaded, list) else []


def sites_of(recording: Recording) -> list[SiteRef]:
    """The participating sites kept with the recording, as (code, name)."""
    loaded = json.loads(recording.participating_sites or "[]")
    if not isinstance(loaded, list):
        return []
    return [(str(s["code"]), str(s.get("name", ""))) for s in loaded if isinstance(s, dict)]


def sites_json(sites: Sequence[SiteRef]) -> str:
    # Compact separators: `search_recordings` matches `"code":"…"` in this text.
    return json.dumps(
        [{"code": code, "name": name} for code, name in sites],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def site_refs(sites: Iterable[SiteRef]) -> list[SiteRef]:
    """Sites as (code, name) with NFC names; the first of a code is kept; BadRequest if bad."""
    seen: dict[str, str] = {}
    for site in sites:
        try:
            code, name = site
        except (TypeError, ValueError):
            raise BadRequest(f"a site is (code, name) (got {site!r})") from None
        code = nfc(code)
        if not code or len(code) > 32:
            raise BadRequest(f"site code must be 1-32 characters (got {code!r})")
        seen.setdefault(code, nfc(name)[:200])
    return list(seen.items())


def parse_keywords(keywords: str | Iterable[str]) -> list[str]:
    """Keywords as stored: NFC, stripped, empties and case-insensitive repeats dropped; a string
    is split on commas (as typed in a form). BadRequest for too many or a bad one."""
    items = keywords.split(",") if isinstance(keywords, str) else list(keywords)
    result: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise BadRequest(f"a keyword is text (got {item!r})")
        keyword = " ".join(nfc(item).split())
        if not keyword:
            continue
        if len(keyword) > MAX_KEYWORD_LENGTH:
            raise BadRequest(f"a keyword has at most {MAX_KEYWORD_LENGTH} characters")
        if KEYWORD_FORBIDDEN & set(keyword):
            raise BadRequest(f"a keyword has no comma (got {keyword!r})")
        if lower(keyword) not in seen:
            seen.add(lower(keyword))
            result.append(keyword)
    if len(result) > MAX_KEYWORDS:
        raise BadRequest(f"at most {MAX_KEYWORDS} keywords")
    return result


def check_record_code(code: str | None) -> str | None:
    """An archival record code: NFC, at most 64 characters, no control characters; blank is
    None."""
    if code is None:
        return None
    text = nfc(code)
    if not text:
        return None
    if len(text) > MAX_RECORD_CODE_LENGTH:
        raise BadRequest(f"record code has at most {MAX_RECORD_CODE_LENGTH} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise BadRequest("record code has no control characters")
    return text


def check_access_level(level: str | AccessLevel) -> AccessLevel:
    """One of internal, restricted, confidential; BadRequest else."""
    try:
        return AccessLevel(str(level).strip().lower())
    except ValueError:
        choices = ", ".join(a.value for a in AccessLevel)
        raise BadRequest(f"access level must be one of {choices} (got {level!r})") from None


def check_retention(until: date | None) -> date | None:
    """A retention date (a date, not a datetime) or None for no limit."""
    if until is None:
        return None
    # A datetime is a date too: refuse it rather than drop its time silently.
    if isinstance(until, datetime) or not isinstance(until, date):
        raise BadRequest(f"retention must be a date (got {until!r})")
    return until


def check_aware(when: datetime, what: str) -> datetime:
    """`when` if it has a time zone; BadRequest naming `what` else."""
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest(f"{what} must be a datetime with a time zone")
    return when


def check_relative_path(path: str) -> str:
    """`path` as a clean POSIX path inside the recordings folder; BadRequest when it escapes."""
    text = str(path).replace("\\", "/")
    pure = PurePosixPath(text)
    if (
        not text
        or pure.is_absolute()
        or any(part in ("..", "") for part in text.split("/"))
        or len(text) > MAX_PATH_LENGTH
    ):
        raise BadRequest(f"file path must be relative, inside the recordings folder (got {path!r})")
    return pure.as_posix()


def check_reason(reason: str) -> str:
    """Why a recording was interrupted or failed, NFC, at most 2000 characters."""
    return nfc(reason)[:MAX_REASON_LENGTH] or "unknown"
