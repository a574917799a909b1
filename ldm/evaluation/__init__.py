"""The arbitrary-scale evaluation protocol behind eval_sr.py, in small pieces.

protocol   GT/LR pairs and per-image seeds (what makes numbers reproducible and comparable)
slices     which slices are evaluated and whether they can be
methods    the compared super-resolvers: learned runs, bicubic, Lanczos
scoring    per-image metrics, full range and re-windowed
runner     the loop over slices, scales and methods
report     metrics.json, per-image CSV, the printed table, the PSNR-vs-scale plot
images     SR / uncertainty / side-by-side PNGs
"""
