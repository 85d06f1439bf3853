"""`giaoban sites ...` end to end as a subprocess, on a data directory of its own."""

from __future__ import annotations

from pathlib import Path

from vietnam_provinces import ProvinceCode, Ward

from tests.functional.test_users_cli import giaoban

GOOD_CSV = (
    "\ufeffcode,name,level,parent_code\nH1,Huyện Phong Thổ,huyện,12\n03388,Phường Đoàn Kết,xã,H1\n"
)


def test_provinces_lists_the_package_codes(tmp_path: Path) -> None:
    result = giaoban(tmp_path, "sites", "provinces")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["code", "name", "type"]
    assert any(line.startswith("01  ") and "Hà Nội" in line for line in lines)
    assert any(line.startswith("12  ") and "Lai Châu" in line for line in lines)
    assert "vietnam-provinces" in lines[-1]
    assert not (tmp_path / "giaoban.sqlite3").exists()  # no database needed


def test_import_list_and_csv(tmp_path: Path) -> None:
    communes = len(list(Ward.iter_by_province(ProvinceCode(12))))
    empty = giaoban(tmp_path, "sites", "list")
    assert empty.returncode == 0 and "no sites yet" in empty.stdout

    first = giaoban(tmp_path, "sites", "import", "--province", "12")
    assert first.returncode == 0, first.stderr
    assert f"added {communes + 1}, updated 0, unchanged 0" in first.stdout
    again = giaoban(tmp_path, "sites", "import", "--province", "12")
    assert f"added 0, updated 0, unchanged {communes + 1}" in again.stdout

    unknown = giaoban(tmp_path, "sites", "import", "--province", "99")
    assert unknown.returncode == 2
    assert "'99'" in unknown.stderr and "giaoban sites provinces" in unknown.stderr

    good = tmp_path / "don-vi.csv"
    good.write_text(GOOD_CSV, encoding="utf-8")
    imported = giaoban(tmp_path, "sites", "import", "--csv", str(good))
    assert imported.returncode == 0, imported.stderr
    assert "added 1, updated 1, unchanged 0" in imported.stdout

    listed = giaoban(tmp_path, "sites", "list", "--province", "12")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "12  Lai Châu  (province)"
    assert "  H1  Huyện Phong Thổ  (district)" in lines
    assert "    03388  Phường Đoàn Kết  (commune)" in lines
    assert lines[-1] == f"Tổng / total: {communes + 2} (province 1, district 1, commune {communes})"
    assert giaoban(tmp_path, "sites", "list", "--province", "NOPE").returncode == 2


def test_bad_csv_is_refused_whole(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        GOOD_CSV.replace("12\n", "\n") + ",Không mã,xã,H1\nX2,Xã,làng,NOWHERE\nH1,Lặp,xã,\n",
        encoding="utf-8",
    )
    result = giaoban(tmp_path, "sites", "import", "--csv", str(bad))
    assert result.returncode == 2
    assert "nothing imported" in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert [p.split(":")[0] for p in problems] == [
        "dòng 4 / line 4",
        "dòng 5 / line 5",
        "dòng 5 / line 5",
        "dòng 6 / line 6",
    ]
    assert "the code is empty" in problems[0] and "unknown level làng" in problems[1]
    assert "parent NOWHERE" in problems[2] and "already on line 2" in problems[3]
    assert "no sites yet" in giaoban(tmp_path, "sites", "list").stdout

    from_stdin = giaoban(tmp_path, "sites", "import", "--csv", "-", stdin=GOOD_CSV)
    assert from_stdin.returncode == 2 and "parent 12" in from_stdin.stderr  # 12 not imported
    missing = giaoban(tmp_path, "sites", "import", "--csv", str(tmp_path / "none.csv"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    wrong = giaoban(tmp_path, "sites", "import", "--csv", str(bad), "--parent", "12")
    assert wrong.returncode == 2 and "--parent" in wrong.stderr
