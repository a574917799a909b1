"""The repository stands on its own: no tracked file points at a folder outside it.

Docs, scripts and tests once named the developers' own folders; a user has none of them. The
rule is generic, so that this test does not have to spell out what it forbids: an absolute path
may only start in a standard system folder (or the README's example data folder), and no path
climbs out of the repository into a sibling folder (a config's `../first-stage/...`, relative to
the config's own folder, stays inside and is fine).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# the first folder of an absolute path a user's machine has, or the docs' and tests' examples
SYSTEM_ROOTS = {"tmp", "usr", "bin", "etc", "proc", "dev", "data", "elsewhere"}
ABSOLUTE = re.compile(r"(?:^|(?<=[\s\"'`(=]))/([A-Za-z_][\w.-]*)/", re.MULTILINE)
SIBLING = re.compile(r"(?<![\w./])(?:\.\./)+\.?[A-Za-z][\w.-]*/")  # ../folder/, ../../folder/: climbing out


def outside_paths(text: str, where: Path | None = None) -> list[str]:
    """The paths in `text` that lead outside the repository; `where` is the file holding the text
    (a ../ path is read relative to its folder; without it every ../folder/ counts as outside)."""
    found = [m.group() for m in ABSOLUTE.finditer(text) if m.group(1) not in SYSTEM_ROOTS]
    return found + [m.group() for m in SIBLING.finditer(text)
                    if where is None or not (where.parent / m.group()).resolve().is_relative_to(REPO)]


def tracked_text_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / name for name in listing.decode().split("\0") if name and name not in (THIS, ".gitignore")]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_no_tracked_file_points_outside_the_repository():
    files = tracked_text_files()
    assert any(p.name == "BENCHMARKS.md" for p in files), "git ls-files listed the repository"
    found = [f"{path.relative_to(REPO)}: {hit}" for path in files
             for hit in outside_paths(path.read_text(errors="replace"), path)]
    assert not found, "\n".join(found)


def test_the_rule_catches_what_it_is_for():
    """A guard that matches nothing would pass forever."""
    for text in ["see /home/alice/notes.md", "python ../tools/run.py", "`../.hidden/README.md`",
                 'open("/srv/lab/x.png")']:
        assert outside_paths(text), text
    for text in ["logs/<run>/checkpoints/last.ckpt", "/tmp/gm", "PATH=/usr/bin:/bin", "'../x.png'",
                 "python -m ldm.data.convert /data/covid/", "bench/out/eval/", "a/b/c"]:
        assert not outside_paths(text), text
    config = REPO / "configs" / "latent-diffusion" / "x.yaml"
    assert not outside_paths("model_of: ../first-stage/ct-tiny.yaml", config)
    assert outside_paths("model_of: ../../../first-stage/ct-tiny.yaml", config)
    assert outside_paths("see ../first-stage/ct-tiny.yaml", REPO / "README.md")
