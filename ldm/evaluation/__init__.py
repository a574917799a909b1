"""The arbitrary-scale evaluation protocol behind eval_sr.py, in three files read in this order.

protocol   which slices are evaluated (and whether they can be), GT/LR pairs and per-image seeds:
           what makes numbers reproducible and comparable
runner     the compared super-resolvers (bicubic, Lanczos, the trained runs), per-image metrics
           (full range and re-windowed), the loop over slices, scales and methods
report     metrics.json, per-image CSV, the printed table, the PSNR-vs-scale plot, and the per-slice
           SR / uncertainty PNGs and comparison figures
"""
