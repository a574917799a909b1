import os

from ldm.util import write_text_atomic


def test_atomic_writes_are_as_readable_as_ordinary_files(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "metrics.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(umask)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("metrics.json") == mode("plain.json") == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
