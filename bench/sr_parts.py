"""Where the time of one real-size LDM super-resolution goes: each part of sr.py's path timed alone.

    python bench/sr_parts.py --exp logs/<demo LDM run> \
        --input data/CT/chest/chest_lung2_s01_slice_030.png --scale 2

The slice is the LR (as in `sr.py --input`). Parts, in the order super_resolve runs them: the
condition (bicubic upsampling to the model input and the first stage's encoder), one denoising
step (the UNet over every latent tile; a sampler runs `--steps` of them), the decoder's feature
map, the regressor's SR at the output size (a first stage with `regressor_config`; its share of
the decode), and the whole decode (features, LIIF render and regressor). Each part is timed
`--repeats` times after one warm-up call; the median is shown. `--threads` pins torch's CPU
threads (default: torch's own choice). The rows and their sum for `--steps` go to --out (JSON).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, card_name, format_table, time_call, write_json  # noqa: E402
from ldm.data.intensity import hu_window, read_slice  # noqa: E402
from ldm.experiment import load_experiment  # noqa: E402
from ldm.models.base import model_input_size  # noqa: E402
from ldm.modules.tiles import tiled  # noqa: E402
from ldm.util import run_record  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/sr_parts.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="a trained LDM run (log dir)")
    p.add_argument("--input", required=True, help="a 16-bit PNG slice, used as the LR")
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10, help="sampler steps the total is given for")
    p.add_argument("--tile", type=int, default=None, help="latent tile (default: the model's sample_tile)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "sr_parts.json"))
    return p


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_experiment(args.exp, use_ema=True)
    if run.kind != "ldm":
        raise SystemExit(f"--exp {args.exp}: an LDM run, got a {run.kind} run")
    model = run.model
    hu, _ = read_slice(args.input)
    lr = torch.from_numpy(hu_window(hu, run.hu_window))[None, None]
    out_hw = (round(lr.shape[-2] * args.scale), round(lr.shape[-1] * args.scale))
    in_hw = model_input_size(tuple(lr.shape[-2:]), out_hw, model.max_input_scale, model.input_multiple)
    sampling = model.sampling(None, args.steps, None, args.tile)
    tile = sampling.tile or 0
    cond = model.condition(lr, in_hw, tile)
    denoiser = tiled(model.predict_eps, sampling.tile, model.sample_tile_overlap, model.unet.downsample_factor)
    z_t, t = torch.randn_like(cond), torch.full((1,), 500, dtype=torch.long)
    first = model.first_stage
    parts = {
        "condition (upsample + encode)": lambda: model.condition(lr, in_hw, tile),
        "one denoising step": lambda: denoiser(z_t, t, cond=cond),
        "decoder features": lambda: first.features(cond / model.latent_scale, tile),
        "decode (features + LIIF + regressor)": lambda: model.decode(cond, out_hw, lr, tile),
    }
    if first.regressor is not None:
        parts["  of which the regressor's SR"] = lambda: first.regressor.super_resolve(lr, out_hw)
    cpu = torch.device("cpu")
    rows = [{"part": name, "s": time_call(fn, cpu, warmup=1, repeats=args.repeats).median_s}
            for name, fn in parts.items()]
    seconds = {row["part"]: row["s"] for row in rows}
    total = (seconds["condition (upsample + encode)"] + args.steps * seconds["one denoising step"]
             + seconds["decode (features + LIIF + regressor)"])
    rows.append({"part": f"sum for {args.steps} steps", "s": total})
    print(f"{args.input}: {tuple(lr.shape[-2:])} -> {out_hw}, model input {in_hw}, latent {tuple(cond.shape[-2:])}, "
          f"tile {sampling.tile}; {card_name(cpu)}, {torch.get_num_threads()} threads")
    print(format_table(rows, [("part", "part", "s"), ("s", "seconds", ".2f")]))
    write_json(args.out, run_record("bench/sr_parts.py", sys.argv[1:] if argv is None else argv,
                                    exp=str(args.exp), input=args.input, out_hw=out_hw, in_hw=in_hw,
                                    latent=list(cond.shape[-2:]), tile=sampling.tile,
                                    threads=torch.get_num_threads(), rows=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
