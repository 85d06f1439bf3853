"""Site files: the pure parsing and checking of a CSV site tree, and the tree rules.

A file ``code,name,level,parent_code`` (header required) is read whole and every problem is
collected with its line number; `CsvRejected` (a BadRequest) carries them all, so that an
operator fixes the file in one go and nothing is half-imported. `tree_problems` also serves the
store (`server.sites.import_sites`): unknown parents, loops and too-deep chains once the rows
are laid over the stored tree. Limits: a code is 1-32 characters of ``A-Z a-z 0-9 . _ -`` (it
appears in URLs and comma-separated forms); a tree is at most `MAX_SITE_DEPTH` levels deep,
because invitations follow at most that many parents.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.errors import BadRequest
from server.store.models import SiteLevel

MAX_CODE_LENGTH = 32  # Site.code is String(32)
MAX_NAME_LENGTH = 200  # Site.name is String(200)
MAX_ROWS = 20_000  # the whole country is ~3,400 units; a bound keeps one upload cheap
CODE_RE = re.compile(r"[A-Za-z0-9._-]+")
# Invitations follow at most this many parents (server.room_records.MAX_SITE_DEPTH, kept equal
# by a test): a deeper tree would silently stop inviting its lowest sites.
MAX_SITE_DEPTH = 32
COLUMNS = ("code", "name", "level", "parent_code")

# Vietnamese level names as operators write them, with or without diacritics (folded before the
# lookup). "thành phố" is left out on purpose: it is a province (Hà Nội) or a district (Thủ Đức).
LEVEL_NAMES: dict[str, SiteLevel] = {
    "trung uong": SiteLevel.CENTRAL,
    "tinh": SiteLevel.PROVINCE,
    "thanh pho trung uong": SiteLevel.PROVINCE,
    "huyen": SiteLevel.DISTRICT,
    "quan": SiteLevel.DISTRICT,
    "thi xa": SiteLevel.DISTRICT,
    "thanh pho thuoc tinh": SiteLevel.DISTRICT,
    "xa": SiteLevel.COMMUNE,
    "phuong": SiteLevel.COMMUNE,
    "thi tran": SiteLevel.COMMUNE,
    "dac khu": SiteLevel.COMMUNE,
    "khac": SiteLevel.OTHER,
}

# Each problem kind: (Vietnamese, English), with {placeholders} filled from Problem.values.
PROBLEM_TEXT: dict[str, tuple[str, str]] = {
    "encoding": ("tệp không phải văn bản UTF-8", "the file is not UTF-8 text"),
    "header": (
        "dòng tiêu đề phải có các cột code,name,level,parent_code (thiếu: {missing})",
        "the header must name the columns code,name,level,parent_code (missing: {missing})",
    ),
    "empty": ("tệp không có đơn vị nào", "the file has no sites"),
    "too_many": ("tệp có quá {max} đơn vị", "the file has more than {max} sites"),
    "columns": ("có {got} cột, cần {want}", "{got} columns, expected {want}"),
    "syntax": ("lỗi cú pháp CSV: {error}", "CSV syntax error: {error}"),
    "code_empty": ("thiếu mã đơn vị", "the code is empty"),
    "code_long": ("mã {code} dài quá {max} ký tự", "code {code} is longer than {max} characters"),
    "code_invalid": (
        "mã {code} chỉ được gồm chữ không dấu, chữ số, '.', '_', '-'",
        "code {code} may only contain A-Z, a-z, 0-9, '.', '_', '-'",
    ),
    "name_empty": ("thiếu tên đơn vị", "the name is empty"),
    "name_long": ("tên dài quá {max} ký tự", "the name is longer than {max} characters"),
    "level_unknown": (
        "cấp {level} không hợp lệ (dùng: {choices})",
        "unknown level {level} (use: {choices})",
    ),
    "duplicate": ("mã {code} trùng với dòng {first}", "code {code} is already on line {first}"),
    "parent_unknown": (
        "không có đơn vị cấp trên {parent} trong tệp hay trong cơ sở dữ liệu",
        "parent {parent} is neither in the file nor in the database",
    ),
    "cycle": ("cấp trên tạo thành vòng lặp: {chain}", "the parents make a loop: {chain}"),
    "too_deep": (
        "cây quá {max} cấp: {chain}",
        "the tree is deeper than {max} levels: {chain}",
    ),
}


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRow:
    """One site to import: from a CSV line (`line` ≥ 2) or from the package (`line` 0)."""

    code: str
    name: str
    level: SiteLevel
    parent_code: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an imported file, at a 1-based line."""

    line: int
    kind: str
    values: Mapping[str, str | int] = field(default_factory=dict)

    def text(self, lang: str = "en") -> str:
        """The problem without its line, in `lang` ("vi" or "en")."""
        vi, en = PROBLEM_TEXT[self.kind]
        text = vi if lang == "vi" else en
        for name, value in self.values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    def line_text(self, lang: str = "en") -> str:
        """``dòng 3: …`` / ``line 3: …`` in `lang`."""
        prefix = "dòng" if lang == "vi" else "line"
        return f"{prefix} {self.line}: {self.text(lang)}"

    def __str__(self) -> str:
        return f"dòng {self.line} / line {self.line}: {self.text('vi')} / {self.text('en')}"


class CsvRejected(BadRequest):
    """A site file refused whole; `problems` lists every problem found, by line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        shown = "; ".join(p.line_text() for p in self.problems[:10])
        more = len(self.problems) - 10
        super().__init__(f"{shown}; and {more} more" if more > 0 else shown)


# --- pure helpers -----------------------------------------------------------------------------


def fold(text: str) -> str:
    """`text` lower-cased without Vietnamese diacritics (``Thượng Lâm`` → ``thuong lam``), for
    matching what people type without accents."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.lower().split())


def parse_level(text: str) -> SiteLevel | None:
    """A level as written in a file or form: ``commune``, ``xã``, ``Cấp huyện``, …; None when
    it is none of them."""
    folded = fold(text)
    try:
        return SiteLevel(folded)
    except ValueError:
        pass
    if folded.startswith("cap "):
        folded = folded[4:]
    return LEVEL_NAMES.get(folded)


def clean_name(text: str) -> str:
    # NFC: the same Vietnamese name typed on two systems is the same string; runs of
    # whitespace (a line break pasted from a spreadsheet) become one space.
    return " ".join(unicodedata.normalize("NFC", text).split())


def code_problems(code: str, line: int) -> list[Problem]:
    if not code:
        return [Problem(line, "code_empty")]
    if len(code) > MAX_CODE_LENGTH:
        return [Problem(line, "code_long", {"code": code[:40], "max": MAX_CODE_LENGTH})]
    if not CODE_RE.fullmatch(code):
        return [Problem(line, "code_invalid", {"code": code})]
    return []


def name_problems(name: str, line: int) -> list[Problem]:
    if not name:
        return [Problem(line, "name_empty")]
    if len(name) > MAX_NAME_LENGTH:
        return [Problem(line, "name_long", {"max": MAX_NAME_LENGTH})]
    return []


def decode_csv(data: bytes) -> str:
    """UTF-8 bytes (with or without a BOM) as text; CsvRejected naming the line otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CsvRejected([Problem(line, "encoding")]) from None


def _delimiter(header: str) -> str:
    # Spreadsheets set to Vietnamese (comma as the decimal mark) save CSV with semicolons.
    return ";" if ";" in header and "," not in header else ","


def parse_site_csv(text: str, existing: Mapping[str, str | None] | None = None) -> list[SiteRow]:
    """The rows of a site file ``code,name,level,parent_code`` (header required, any column
    order, extra columns ignored, comma or semicolon separated, a leading BOM ignored).

    Every problem is collected and raised in one `CsvRejected`. With `existing` (code → parent
    code of the sites already stored) parents and loops are checked against the store too;
    without it a parent missing from the file is not reported (`import_sites` checks it)."""
    text = text.removeprefix("\ufeff")
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(first_line))
    problems: list[Problem] = []
    header: list[str] | None = None
    rows: list[SiteRow] = []
    first_line_of: dict[str, int] = {}
    # Rows refused for another reason: their parents are still checked, and a row under one
    # of them is not also told that its parent is missing.
    loose_parents: list[tuple[int, str]] = []
    refused_codes: set[str] = set()
    previous_end = 0
    try:
        for record in reader:
            line = previous_end + 1  # where the record starts (a quoted name may span lines)
            previous_end = reader.line_num
            if not any(cell.strip() for cell in record):
                continue  # blank lines, and a spreadsheet's trailing ",,,"
            if header is None:
                header = [cell.strip().lower() for cell in record]
                missing = [name for name in COLUMNS if name not in header]
                if missing:
                    raise CsvRejected([Problem(line, "header", {"missing": ", ".join(missing)})])
                index = {name: header.index(name) for name in COLUMNS}
                continue
            if len(rows) >= MAX_ROWS:
                problems.append(Problem(line, "too_many", {"max": MAX_ROWS}))
                break
            if len(record) != len(header):
                problems.append(Problem(line, "columns", {"got": len(record), "want": len(header)}))
                continue
            row, row_problems = _parse_record(record, index, line)
            problems += row_problems
            if row is None:
                # Its parent is still checked below: every problem of the file in one go.
                parent = record[index["parent_code"]].strip()
                if parent and not code_problems(parent, line):
                    loose_parents.append((line, parent))
                refused_codes.add(record[index["code"]].strip())
                continue
            if row.code in first_line_of:
                first = first_line_of[row.code]
                problems.append(Problem(line, "duplicate", {"code": row.code, "first": first}))
                continue
            first_line_of[row.code] = line
            rows.append(row)
    except csv.Error as exc:  # e.g. a NUL byte or an unclosed quote
        problems.append(Problem(reader.line_num or 1, "syntax", {"error": str(exc)}))
    if header is None:
        raise CsvRejected([Problem(1, "header", {"missing": ", ".join(COLUMNS)})])
    if not rows and not problems:
        problems.append(Problem(2, "empty"))
    problems += [
        problem
        for problem in tree_problems(rows, existing)
        if problem.kind != "parent_unknown" or problem.values["parent"] not in refused_codes
    ]
    if existing is not None:
        known = set(existing) | set(first_line_of) | refused_codes
        for line, parent in loose_parents:
            if parent not in known:
                problems.append(Problem(line, "parent_unknown", {"parent": parent}))
    if problems:
        raise CsvRejected(problems)
    return rows


def _parse_record(
    record: list[str], index: Mapping[str, int], line: int
) -> tuple[SiteRow | None, list[Problem]]:
    code = record[index["code"]].strip()
    name = clean_name(record[index["name"]])
    level_text = record[index["level"]].strip()
    parent = record[index["parent_code"]].strip()
    problems = code_problems(code, line) + name_problems(name, line)
    level = parse_level(level_text)
    if level is None:
        choices = ", ".join(member.value for member in SiteLevel) + ", tỉnh, huyện, xã, …"
        problems.append(Problem(line, "level_unknown", {"level": level_text, "choices": choices}))
    if parent:
        problems += code_problems(parent, line)
    if problems or level is None:
        return None, problems
    return SiteRow(code=code, name=name, level=level, parent_code=parent or None, line=line), []


def tree_problems(
    rows: Sequence[SiteRow], existing: Mapping[str, str | None] | None = None
) -> list[Problem]:
    """Parents that exist nowhere, loops and too-deep chains once `rows` are laid over the
    stored tree `existing` (code → parent code); without `existing`, missing parents are not
    reported. A loop is reported once, at the first of its lines."""
    parents: dict[str, str | None] = dict(existing or {})
    line_of: dict[str, int] = {}
    for row in rows:
        parents[row.code] = row.parent_code
        line_of[row.code] = row.line
    problems: list[Problem] = []
    for row in rows:
        parent = row.parent_code
        if parent is not None and parent not in parents and existing is not None:
            problems.append(Problem(row.line, "parent_unknown", {"parent": parent}))
    # depth[code]: levels from the top (1 for a root or a site under a missing parent); codes
    # in or above a loop go to `broken`. Each code is walked once: linear in the tree's size.
    depth: dict[str, int] = {}
    broken: set[str] = set()
    too_deep_reported = False
    for row in rows:
        path: list[str] = []
        on_path: set[str] = set()
        current: str | None = row.code
        while current is not None and current in parents and current not in depth:
            if current in broken:
                break
            if current in on_path:
                loop = path[path.index(current) :]
                chain = " → ".join([*loop, current])
                # The stored tree has no loop: one of the file's rows closes it; name its line.
                line = min((line_of[code] for code in loop if code in line_of), default=row.line)
                problems.append(Problem(line, "cycle", {"chain": chain}))
                break
            path.append(current)
            on_path.add(current)
            current = parents[current]
        else:
            base = depth.get(current, 0) if current is not None else 0
            for offset, code in enumerate(reversed(path), start=1):
                depth[code] = base + offset
            if path and depth[path[0]] > MAX_SITE_DEPTH and not too_deep_reported:
                too_deep_reported = True
                chain = " → ".join([path[0], "…", current or path[-1]])
                values = {"max": MAX_SITE_DEPTH, "chain": chain}
                problems.append(Problem(row.line, "too_deep", values))
            continue
        broken.update(path)
    return problems


def dependency_order(rows: Sequence[SiteRow]) -> list[SiteRow]:
    """`rows` with every parent before its children (rows whose parent is outside `rows` first);
    the input must be free of loops (`tree_problems`)."""
    by_code = {row.code: row for row in rows}
    ordered: list[SiteRow] = []
    placed: set[str] = set()
    for row in rows:
        chain: list[SiteRow] = []
        current: SiteRow | None = row
        while current is not None and current.code not in placed:
            chain.append(current)
            current = by_code.get(current.parent_code) if current.parent_code else None
        for item in reversed(chain):
            placed.add(item.code)
            ordered.append(item)
    return ordered
