"""bench/quality_table.py: the BENCHMARKS table and issue 8's goals from eval_sr.py summaries."""

import json

from bench import quality_table


def metrics(psnr, ssim=0.95, mae_hu=10.0, lr_psnr=65.0):
    return {"psnr": psnr, "ssim": ssim, "mae_hu": mae_hu, "lr_psnr": lr_psnr, "psnr_soft": psnr - 15}


def write_summary(folder, n_samples, methods_by_scale, kinds):
    folder.mkdir(parents=True)
    scales = {f"x{s:g}": {"scale_ratio": s, "methods": m} for s, m in methods_by_scale.items()}
    doc = {"scales": scales, "n_samples": n_samples, "method_info": {name: {"kind": k} for name, k in kinds.items()}}
    (folder / "summary.json").write_text(json.dumps(doc))
    for s, m in methods_by_scale.items():  # the per-scale copies eval_sr.py writes too: not read twice
        (folder / f"x{s:g}").mkdir()
        (folder / f"x{s:g}" / "metrics.json").write_text(json.dumps({"scale_ratio": s, "methods": m}))


KINDS = {"bicubic": "bicubic", "liif": "liif", "liif-skip": "liif", "s2": "ldm"}


def test_rows_cells_and_goals(tmp_path, capsys):
    write_summary(tmp_path / "ldm-mean8", 8, {
        2.0: {"bicubic": metrics(51.0, 0.99, 6.0), "liif": metrics(57.0, 0.998, 4.0),
              "liif-skip": metrics(61.0, 0.999, 2.5, 70.0), "s2": metrics(61.2, 0.999, 2.4, 70.0)},
        4.0: {"bicubic": metrics(40.0, 0.97, 20.0), "liif": metrics(46.0), "liif-skip": metrics(47.0),
              "s2": metrics(46.9, 0.99, 9.0, 59.0)},
    }, KINDS)
    write_summary(tmp_path / "ldm-1sample", 1, {2.0: {"bicubic": metrics(51.0, 0.99, 6.0), "s2": metrics(60.0)}},
                  {"bicubic": "bicubic", "s2": "ldm"})
    table = quality_table.read_results([tmp_path])
    assert set(table) == {("bicubic", 1), ("liif", 1), ("liif-skip", 1), ("s2", 8), ("s2", 1)}
    text = quality_table.markdown(table)
    assert text.splitlines()[0] == "| method | x2 | x4 |"
    assert "| LDM, mean of 8 | 61.20 / 0.999 / 2.4 / 46.20 / 70.0 | 46.90 / 0.990 / 9.0 / 31.90 / 59.0 |" in text
    assert text.index("bicubic") < text.index("LIIF (EDSR)") < text.index("LDM, 1 sample") < text.index("mean of 8")

    goals = {g["goal"]: g for g in quality_table.goals(table)}
    skip_x2 = goals["LIIF + LR skip psnr >= reference 60.48 at x2"]
    assert skip_x2["met"] and abs(skip_x2["margin"] - 0.52) < 1e-9
    assert goals["LIIF + LR skip mae_hu <= reference 2.8 at x2"]["met"]  # 2.5 HU
    assert not goals["LIIF + LR skip lr_psnr >= reference 73.8 at x2"]["met"]  # 70 dB
    assert not goals["LIIF + LR skip psnr >= reference 47.74 at x4"]["met"]
    assert goals["LIIF + LR skip psnr >= reference 39.37 at x8"]["met"] is None  # x8 not evaluated
    assert goals["LIIF (no skip) PSNR >= mean of the two reference runs 55.91 dB at x2"]["met"]
    beats = goals["LIIF + LR skip beats bicubic in every metric at x2"]
    assert beats["met"] and beats["unit"].startswith("worst: ")
    assert goals["LDM, mean of 8 PSNR >= best LIIF - 0 dB at x2"]["met"]
    assert not goals["LDM, mean of 8 PSNR >= best LIIF - 0 dB at x4"]["met"]  # 46.9 < 47.0
    assert not goals["LDM, mean of 8 LR-consistency >= 60 dB at x4"]["met"]
    one = goals["LDM, 1 sample PSNR >= best LIIF - 0.5 dB at x2"]
    assert not one["met"] and abs(one["margin"] - (60.0 - 61.0 + 0.5)) < 1e-9
    assert goals["LDM, 1 sample PSNR >= best LIIF - 0.5 dB at x4"]["met"] is None  # only x2 sampled once
    assert not [g for g in goals if g.startswith("stage 3")]  # no s3 rows: nothing claimed about it

    assert quality_table.main([str(tmp_path), "--json", str(tmp_path / "q.json")]) == 0
    printed = capsys.readouterr().out
    assert "| goal | met | margin |" in printed and "| not measured | - |" in printed
    assert json.loads((tmp_path / "q.json").read_text())["goals"]


def test_ties_do_not_beat_and_missing_rows_are_not_measured(tmp_path):
    same = metrics(50.0)
    write_summary(tmp_path / "e", 1, {2.0: {"bicubic": same, "liif": dict(same)}},
                  {"bicubic": "bicubic", "liif": "liif"})
    goals = {g["goal"]: g for g in quality_table.goals(quality_table.read_results([tmp_path]))}
    tie = goals["LIIF (EDSR) beats bicubic in every metric at x2"]
    assert tie["margin"] == 0 and tie["met"] is False
    assert goals["LIIF + LR skip beats bicubic in every metric at x2"]["met"] is None
    assert goals["LDM, mean of 8 LR-consistency >= 60 dB at x2"]["met"] is None  # no LDM evaluated yet



def test_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert quality_table.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no summary.json")
    assert quality_table.main([str(tmp_path / "nope")]) == 2


def test_the_reference_column_is_compared_at_its_printed_precision(tmp_path):
    write_summary(tmp_path / "e", 1, {2.0: {"liif-skip": {**metrics(60.4751, 0.99851, 2.84), "lr_psnr": 73.76}}},
                  {"liif-skip": "liif"})
    goals = {g["goal"]: g for g in quality_table.goals(quality_table.read_results([tmp_path]))}
    for key in ("psnr >= reference 60.48", "ssim >= reference 0.999", "mae_hu <= reference 2.8",
                "lr_psnr >= reference 73.8"):
        assert goals[f"LIIF + LR skip {key} at x2"]["met"], key  # each rounds to the reference's own digits
