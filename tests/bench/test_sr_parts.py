"""bench/sr_parts.py: each part of sr.py's LDM path timed, and the total for the asked steps."""

import json

from logdir_helpers import make_tiny_logdir

from bench import sr_parts


def test_every_part_is_timed_and_the_total_counts_the_steps(ct_splits, tmp_path):
    run = make_tiny_logdir(tmp_path / "logs", "ldm", ct_splits.root)
    slice_png = next(ct_splits.root.rglob("*.png"))
    out = tmp_path / "parts.json"
    assert sr_parts.main(["--exp", str(run), "--input", str(slice_png), "--scale", "1.5", "--steps", "3",
                          "--repeats", "1", "--out", str(out)]) == 0
    seconds = {row["part"]: row["s"] for row in json.loads(out.read_text())["rows"]}
    assert all(s > 0 for s in seconds.values())
    expected = (seconds["condition (upsample + encode)"] + 3 * seconds["one denoising step"]
                + seconds["decode (features + LIIF + regressor)"])
    assert abs(seconds["sum for 3 steps"] - expected) < 1e-9
