"""Site files: parsing, every problem with its line, the tree rules, search and levels."""

from __future__ import annotations

import pytest

from server.room_records import MAX_SITE_DEPTH as ROOM_MAX_SITE_DEPTH
from server.site_csv import (
    MAX_SITE_DEPTH,
    CsvRejected,
    Problem,
    SiteRow,
    decode_csv,
    dependency_order,
    fold,
    parse_level,
    parse_site_csv,
    tree_problems,
)
from server.sites import build_tree, filter_tree, level_counts, subtree
from server.store.models import SiteLevel

HEADER = "code,name,level,parent_code\n"


def problems_of(text: str, existing: dict[str, str | None] | None = None) -> list[tuple[int, str]]:
    with pytest.raises(CsvRejected) as caught:
        parse_site_csv(text, existing)
    assert "Bad request" in caught.value.message  # a BadRequest for the error translators
    return [(p.line, p.kind) for p in caught.value.problems]


def test_depth_limit_matches_the_invitation_walk() -> None:
    assert MAX_SITE_DEPTH == ROOM_MAX_SITE_DEPTH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            HEADER + "12,Lai Châu,province,\n03388,Phường Đoàn Kết,commune,12\n",
            [
                SiteRow("12", "Lai Châu", SiteLevel.PROVINCE, None, 2),
                SiteRow("03388", "Phường Đoàn Kết", SiteLevel.COMMUNE, "12", 3),
            ],
            id="plain, leading zeros kept",
        ),
        pytest.param(
            "\ufeff" + HEADER + "12,Lai Châu,tỉnh,\n",
            [SiteRow("12", "Lai Châu", SiteLevel.PROVINCE, None, 2)],
            id="BOM",
        ),
        pytest.param(
            "parent_code;level;name;code;note\r\n"
            ";Tỉnh;Lai Châu;12;x\r\n"
            "12;Cấp huyện;Phong Thổ;H1;\r\n",
            [
                SiteRow("12", "Lai Châu", SiteLevel.PROVINCE, None, 2),
                SiteRow("H1", "Phong Thổ", SiteLevel.DISTRICT, "12", 3),
            ],
            id="semicolons, CRLF, any column order, extra column",
        ),
        pytest.param(
            HEADER + '\n12,"Lai  Châu\nmới",TINH,\n\n,,,\nX,Xã X,xa,12\n',
            [
                SiteRow("12", "Lai Châu mới", SiteLevel.PROVINCE, None, 3),
                SiteRow("X", "Xã X", SiteLevel.COMMUNE, "12", 7),
            ],
            id="blank lines, a quoted name over two lines, no diacritics",
        ),
        pytest.param(
            HEADER + "H2,Huyện,quận,P\nP,Tỉnh,tỉnh,\n",
            [
                SiteRow("H2", "Huyện", SiteLevel.DISTRICT, "P", 2),
                SiteRow("P", "Tỉnh", SiteLevel.PROVINCE, None, 3),
            ],
            id="child before its parent",
        ),
    ],
)
def test_parses(text: str, expected: list[SiteRow]) -> None:
    assert parse_site_csv(text) == expected


def test_names_are_nfc() -> None:
    decomposed = "Xa\u0303 Thu\u031bo\u031b\u0300ng"  # "Xã Thường" typed with combining marks
    [row] = parse_site_csv(HEADER + f"1,{decomposed},xã,\n")
    assert row.name == "Xã Thường"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(",Xã A,xã,\n", [(2, "code_empty")], id="empty code"),
        pytest.param("1,,xã,\n", [(2, "name_empty")], id="empty name"),
        pytest.param("1,   ,xã,\n", [(2, "name_empty")], id="blank name"),
        pytest.param("A" * 33 + ",Xã,xã,\n", [(2, "code_long")], id="long code"),
        pytest.param("1," + "n" * 201 + ",xã,\n", [(2, "name_long")], id="long name"),
        pytest.param("a b,Xã,xã,\n", [(2, "code_invalid")], id="space in code"),
        pytest.param("xã1,Xã,xã,\n", [(2, "code_invalid")], id="diacritics in code"),
        pytest.param("1,Xã,thành phố,\n", [(2, "level_unknown")], id="ambiguous level"),
        pytest.param("1,Xã,,\n", [(2, "level_unknown")], id="empty level"),
        pytest.param("1,Xã,xã\n", [(2, "columns")], id="too few columns"),
        pytest.param("1,Xã A, B,xã,\n", [(2, "columns")], id="unquoted comma"),
        pytest.param("1,Xã,xã,\n1,Xã,xã,\n", [(3, "duplicate")], id="duplicate code"),
        pytest.param("1,Xã,xã,1\n", [(2, "cycle")], id="own parent"),
        pytest.param(
            "1,A,xã,2\n2,B,xã,3\n3,C,xã,1\n4,D,xã,3\n", [(2, "cycle")], id="loop of three"
        ),
        pytest.param("1,A,xã,b c\n", [(2, "code_invalid")], id="bad parent code"),
        pytest.param('1,"A,xã,\n', [(2, "columns")], id="unclosed quote"),
        pytest.param("", [(2, "empty")], id="header only"),
    ],
)
def test_each_problem_with_its_line(body: str, expected: list[tuple[int, str]]) -> None:
    assert problems_of(HEADER + body) == expected


def test_every_problem_at_once() -> None:
    text = HEADER + (
        "P,Tỉnh,tỉnh,\n"  # 2: fine
        ",Không mã,xã,P\n"  # 3
        "X1,,xã,P\n"  # 4
        "X2,Xã 2,làng,NOWHERE\n"  # 5: level and parent
        "X3,Xã 3,xã,NOWHERE\n"  # 6
        "P,Tỉnh lại,tỉnh,\n"  # 7
        "X4,Xã 4,xã,X1\n"  # 8: X1 is refused on line 4, not missing
    )
    assert problems_of(text, existing={}) == [
        (3, "code_empty"),
        (4, "name_empty"),
        (5, "level_unknown"),
        (5, "parent_unknown"),
        (6, "parent_unknown"),
        (7, "duplicate"),
    ]


def test_texts_name_the_line_in_both_languages() -> None:
    with pytest.raises(CsvRejected) as caught:
        parse_site_csv(HEADER + "1,Xã,xã,\n1,Xã,xã,\n")
    [problem] = caught.value.problems
    assert problem.line_text("vi") == "dòng 3: mã 1 trùng với dòng 2"
    assert problem.line_text("en") == "line 3: code 1 is already on line 2"
    assert str(problem) == "dòng 3 / line 3: mã 1 trùng với dòng 2 / code 1 is already on line 2"
    assert "line 3" in caught.value.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("code,name,level\n1,A,xã\n", 1, id="column missing"),
        pytest.param("1,A,xã,\n", 1, id="no header"),
        pytest.param("\n\nma,ten,cap,cha\n", 3, id="header after blank lines"),
        pytest.param("", 1, id="empty file"),
    ],
)
def test_header_required(text: str, line: int) -> None:
    assert problems_of(text) == [(line, "header")]


def test_decode_with_and_without_bom() -> None:
    text = HEADER + "1,Xã Thượng Lâm,xã,\n"
    assert decode_csv(text.encode()) == text
    assert decode_csv(b"\xef\xbb\xbf" + text.encode()) == text
    with pytest.raises(CsvRejected) as caught:
        decode_csv(HEADER.encode() + "1,Xã,xã,\n".encode("latin-1"))  # a legacy encoding
    assert [(p.line, p.kind) for p in caught.value.problems] == [(2, "encoding")]


def test_parents_checked_against_the_store() -> None:
    body = HEADER + "X,Xã X,xã,12\n"
    assert parse_site_csv(body) == [SiteRow("X", "Xã X", SiteLevel.COMMUNE, "12", 2)]
    assert problems_of(body, existing={}) == [(2, "parent_unknown")]
    assert parse_site_csv(body, existing={"12": None})[0].parent_code == "12"


def test_loop_through_the_store() -> None:
    # Stored: 12 ← H1. The file puts 12 under H1: a loop made of a file row and a stored one.
    assert problems_of(HEADER + "12,Lai Châu,tỉnh,H1\n", existing={"12": None, "H1": "12"}) == [
        (2, "cycle")
    ]


def test_too_deep() -> None:
    rows = [
        SiteRow(f"S{i}", f"S{i}", SiteLevel.OTHER, f"S{i - 1}" if i else None, i + 2)
        for i in range(MAX_SITE_DEPTH + 1)
    ]
    assert [p.kind for p in tree_problems(rows)] == ["too_deep"]
    assert tree_problems(rows[:-1]) == []


def test_dependency_order_puts_parents_first() -> None:
    rows = [
        SiteRow("c", "c", SiteLevel.COMMUNE, "b"),
        SiteRow("a", "a", SiteLevel.PROVINCE, None),
        SiteRow("b", "b", SiteLevel.DISTRICT, "a"),
        SiteRow("d", "d", SiteLevel.COMMUNE, "stored"),
    ]
    assert [row.code for row in dependency_order(rows)] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("commune", SiteLevel.COMMUNE),
        ("Province", SiteLevel.PROVINCE),
        ("tỉnh", SiteLevel.PROVINCE),
        ("Thành phố trung ương", SiteLevel.PROVINCE),
        ("huyện", SiteLevel.DISTRICT),
        ("Thị xã", SiteLevel.DISTRICT),
        ("cấp xã", SiteLevel.COMMUNE),
        ("phường", SiteLevel.COMMUNE),
        ("đặc khu", SiteLevel.COMMUNE),
        ("trung ương", SiteLevel.CENTRAL),
        ("khác", SiteLevel.OTHER),
        ("thành phố", None),
        ("village", None),
    ],
)
def test_levels(text: str, level: SiteLevel | None) -> None:
    assert parse_level(text) == level


def test_fold_and_search() -> None:
    assert fold("  Xã  Thượng LÂM ") == "xa thuong lam"
    assert fold("Đoàn Kết") == "doan ket"
    tree = build_tree(
        [
            ("12", "Lai Châu", SiteLevel.PROVINCE, None),
            ("H1", "Huyện Phong Thổ", SiteLevel.DISTRICT, "12"),
            ("03388", "Phường Đoàn Kết", SiteLevel.COMMUNE, "H1"),
            ("03390", "Xã Bình Lư", SiteLevel.COMMUNE, "12"),
            ("ORPHAN", "Mồ côi", SiteLevel.OTHER, "GONE"),
        ]
    )
    assert [n.code for n in tree] == ["12", "ORPHAN"]
    assert [n.code for n in tree[0].children] == ["03390", "H1"]
    found = filter_tree(tree, "doan ket")
    assert [n.code for n in found] == ["12"]
    assert [n.code for n in found[0].children] == ["H1"]
    assert [n.code for n in found[0].children[0].children] == ["03388"]
    # A matching site keeps everything under it.
    assert filter_tree(tree, "phong tho")[0].children[0].count() == 2
    by_code = filter_tree(tree, "0339")
    assert [n.code for n in by_code[0].children] == ["03390"]
    assert filter_tree(tree, "nothing") == []
    counts = level_counts(tree)
    assert counts[SiteLevel.COMMUNE] == 2 and counts[SiteLevel.CENTRAL] == 0
    assert subtree(tree, "H1")[0].count() == 2


def test_problem_values_fill_placeholders() -> None:
    problem = Problem(4, "parent_unknown", {"parent": "99"})
    assert problem.text("en") == "parent 99 is neither in the file nor in the database"
