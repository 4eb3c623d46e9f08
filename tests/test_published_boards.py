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
