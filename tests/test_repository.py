"""The repository stands on its own: no tracked file points outside it or at the machine it was built on.

Docs, scripts and tests once named the developers' own folders and the arrangements of the GPU
machine they borrowed; a user has neither. GPU runs are described in terms any user has (one GPU,
a time limit per job, no network on the job), and this test keeps it so.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()  # it spells every pattern out

OUTSIDE = {
    "an absolute path of the development machine": r"(?<![\w./])/work/|/tmp/democlone",
    "a folder beside the repository": r"\.\./(\.library|shared)\b|\.library/",
    "a document that is not in the repository": r"\bMETHOD\.md\b",
    "the development machine's arrangements": r"\bworkplace\b|\bdevice tool\b|\blent\b|\bdevice time\b|\bfiles_at\b",
}


def tracked_text_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / name for name in listing.decode().split("\0") if name and name != THIS]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_no_tracked_file_points_outside_the_repository():
    files = tracked_text_files()
    assert any(p.name == "BENCHMARKS.md" for p in files), "git ls-files listed the repository"
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in OUTSIDE.items():
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: '{match.group()}' ({what})")
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    """A guard that matches nothing would pass forever."""
    caught = [
        "The method of `/work/.library/device/METHOD.md`",
        "python ../shared/tool.py",
        "On the lent device, a call brings back 8 files",
        "the workplace's device tool",
    ]
    for text in caught:
        assert any(re.search(p, text) for p in OUTSIDE.values()), text
    for text in ["silently", "an equivalent run", "start_new_session=True", "data/CT/lung", "bench/out/work/"]:
        assert not any(re.search(p, text) for p in OUTSIDE.values()), text
