"""CT slices on disk and in training, in three groups that import only downwards.

File conventions, shared by training, sr.py and the converter:
  intensity    the one intensity convention (16-bit PNG = HU + 1024, windows in HU), reading and
               writing slices, SR and std PNGs
  volumes      volume files (NIfTI/Analyze, NRRD, DICOM series, .inv3) with their geometry, NIfTI
               out, and how a volume's slices are named
The training path (what main.py's data config builds; imports no preparation module):
  degradation  HR -> LR (bicubic, ct), resizing, back-projection
  slices       a split list's slices as model-range tensors
  batches      random crops, scales and LR/HR/GT pairs per batch
  loader       the resumable training loader
  datamodule   the Lightning data module (configs: ldm.data.datamodule.CTDataModule)
Offline preparation (commands a user runs once; nothing above imports them):
  convert      `python -m ldm.data.convert`: volumes -> 16-bit HU PNG slices
  sample       `python -m ldm.data.sample`: the embedded sample CT through the package managers
  patients     patient ids and the patient-wise split behind split.py
They stay in one package because the commands and the config target above are names users type.
"""
