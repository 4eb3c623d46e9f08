"""Every published board rebuilds from the export it ships, byte for byte, without a tracking store."""
import re
from pathlib import Path

import pytest

from moebench.cli import main

BOARDS = sorted(p.parent for p in (Path(__file__).resolve().parent.parent / "leaderboards").glob("*/runs.json.gz"))


def test_every_board_folder_ships_its_export():
    folders = sorted(p for p in (Path(__file__).resolve().parent.parent / "leaderboards").iterdir() if p.is_dir())
    assert folders and folders == BOARDS


@pytest.mark.parametrize("folder", BOARDS, ids=lambda p: p.name)
def test_board_rebuilds_from_its_export_byte_for_byte(folder, tmp_path):
    readme = (folder / "README.md").read_text()
    formats = re.search(r"--from-export runs.json.gz --output DIR --format ([a-z,]+)", readme).group(1)
    assert main(["leaderboard", "--from-export", str(folder / "runs.json.gz"), "--output", str(tmp_path), "--format", formats]) == 0
    published = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == published
    for name in published:
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), f"{folder.name}/{name} differs when rebuilt"
    assert "select (best epoch)" in readme and "report:" in readme and "majority (no training)" in readme


def test_a_board_split_over_two_exports_rebuilds_the_same(tmp_path):
    from moebench.export import read_export, write_export

    folder = min(BOARDS, key=lambda p: (p / "runs.json.gz").stat().st_size)
    records = read_export(str(folder / "runs.json.gz"))
    write_export(records[::2], str(tmp_path / "a.json.gz"))
    write_export(records[1::2], str(tmp_path / "b.json.gz"))
    main(["leaderboard", "--from-export", str(tmp_path / "a.json.gz"), str(tmp_path / "b.json.gz"), "--output", str(tmp_path / "both"),
          "--format", "md"])
    main(["leaderboard", "--from-export", str(folder / "runs.json.gz"), "--output", str(tmp_path / "one"), "--format", "md"])
    assert (tmp_path / "both" / "leaderboard.md").read_text() == (tmp_path / "one" / "leaderboard.md").read_text()
