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


REBUILD_ALL = """
import sys
from pathlib import Path
from moebench.cli import main
out = Path(sys.argv[1])
for folder in map(Path, sys.argv[2:]):
    formats = __import__("re").search(r"--format ([a-z,]+)`", (folder / "README.md").read_text()).group(1)
    assert main(["leaderboard", "--from-export", str(folder / "runs.json.gz"), "--output", str(out / folder.name), "--format", formats]) == 0
"""


def dispatch_disabled() -> str:
    """Every SIMD target numpy would dispatch to on this CPU (AVX2, AVX-512, AMX-era...), by numpy's own names."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    return " ".join(__cpu_dispatch__)


# numpy's SIMD dispatch down to its baseline (no AVX2, AVX-512 or later kernels), OpenBLAS's
# oldest x86-64 kernels and a changed thread count: one rebuild that differs from the machine's
# own in every way the issue found to matter (an AMX Xeon wrote other 16th digits than an EPYC).
CHANGED_DISPATCH = {"NPY_DISABLE_CPU_FEATURES": "dispatch", "OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_NUM_THREADS": "2",
                    "OMP_NUM_THREADS": "2"}


def test_every_board_rebuilds_byte_for_byte_under_changed_numeric_dispatch(tmp_path, changes=CHANGED_DISPATCH):
    """A board must read the same on an AVX2, an AVX-512 and an AMX machine: rebuilt with numpy's
    SIMD dispatch and OpenBLAS's kernels and threads changed, every file is the published one."""
    import os
    import subprocess
    import sys

    env = dict(os.environ) | {k: (dispatch_disabled() if v == "dispatch" else v) for k, v in changes.items()}
    subprocess.run([sys.executable, "-c", REBUILD_ALL, str(tmp_path), *map(str, BOARDS)], env=env, check=True,
                   capture_output=True)
    for folder in BOARDS:
        for published in folder.iterdir():
            rebuilt = tmp_path / folder.name / published.name
            assert rebuilt.read_bytes() == published.read_bytes(), f"{folder.name}/{published.name} differs under {changes}"


def index_claims() -> list[tuple[str, str]]:
    """(board folder, bullet text) for every bullet of leaderboards/README.md's "What they can say":
    a top-level bullet names its board first, its sub-bullets belong to it."""
    text = (BOARDS[0].parent / "README.md").read_text()
    section = text[text.index("What they can say"):text.index("Retired:")]
    claims, folders = [], []
    for bullet in re.split(r"\n(?=\s*- )", section)[1:]:
        if not bullet.startswith(" "):
            folders = re.findall(r"`([a-z0-9-]+)`", bullet.split(":")[0].split("(")[0])
        claims += [(folder, bullet) for folder in folders[:1]] if len(folders) <= 1 else [(f, bullet) for f in folders]
    return claims


def test_every_number_in_the_index_is_on_its_board():
    """Prose from data: each decimal and each n= of leaderboards/README.md's claims is printed by the
    board the claim is about (its README or table), so a rebuilt board cannot leave the index behind."""
    claims = index_claims()
    assert {folder for folder, _ in claims} == {p.name for p in BOARDS}
    for folder, bullet in claims:
        board = " ".join((BOARDS[0].parent / folder / name).read_text() for name in ("README.md", "leaderboard.md"))
        on_board = set(re.findall(r"(?<![\d.])\d+\.\d+(?![\d])", board)) | set(re.findall(r"n=\d+", board))
        numbers = re.findall(r"(?<![\d.])\d+\.\d+(?![\d])", bullet) + re.findall(r"n=\d+", bullet)
        missing = [n for n in numbers if n not in on_board]
        assert not missing, f"{folder}: {missing} are not on the board, in: {bullet.strip()[:120]}"
