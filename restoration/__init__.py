"""Image restoration with SAM / RobustSAM structure priors.

* :mod:`restoration.paired_data`: SOTS / GoPro pairs and the one crop rule; :mod:`restoration.datasets`:
  the pairs with their (cached) priors, aligned through crops and flips, as the prior batch every
  network reads.
* :mod:`restoration.archs`: NAFNet, SAM-Deblur and SAM-guided dehazing networks, all called as
  ``network(lq, prior)``; :mod:`restoration.mask_groups`: how masks become regions and mask dropout.
* the priors' label maps, structure maps and grayscale coding live in :mod:`robustprior.data.structure`.
* :mod:`restoration.config`: the options schema, in BasicSR's vocabulary, and the checks run before any
  work; :mod:`restoration.train`: the training loop on the run engine and its command line
  (``python -m restoration.train -opt OPTIONS.yml``), with :mod:`restoration.losses`,
  :mod:`restoration.run_priors` (a run's priors, settled before its network) and
  :mod:`restoration.evaluation` (a network scored on a test set).
* :mod:`restoration.trained_run`: a finished run read back without the trainer (its folder's file names,
  its network and prior); :mod:`restoration.restore`: a user's image or folder restored with a trained
  run and its own prior (the recipes' ``--restore``); :mod:`restoration.inference`: one image through a
  network, whole or tiled.
* :mod:`restoration.metrics`, :mod:`restoration.tiling`, :mod:`restoration.report`: PSNR / SSIM,
  tiled inference and Table-8-style reports; :mod:`restoration.table8`: the recipes (rows x seeds, control
  priors :mod:`restoration.control_priors`, :mod:`restoration.verdict`, :mod:`restoration.prior_quality`,
  :mod:`restoration.prior_reliance`, :mod:`restoration.prior_swap`).

Imports flow one way: the recipe engine (:mod:`restoration.table8`) -> the readers of finished runs
(:mod:`restoration.restore`, :mod:`restoration.report`, ...) and the trainer -> datasets -> priors; no
reader of a finished run imports :mod:`restoration.train` (tests/test_imports.py).

BasicSR: its option vocabulary and metrics, not its training loop
-----------------------------------------------------------------
Options use BasicSR's keys wherever BasicSR has one (``-opt``, ``dataroot_lq`` / ``dataroot_gt``,
``gt_size``, ``batch_size_per_gpu``, ``pixel_opt``, ``optim_g``, ``scheduler``, ``total_iter``,
``manual_seed``, ``val``, ``logger``), and NAFNet's / SAM-Deblur's network names, so a SAM-Deblur
option file runs with its paths edited (:mod:`restoration.config`); our own keys only where BasicSR
has none (the ``prior`` section, the data ``layout``). BasicSR itself serves the reference
``calculate_psnr`` / ``calculate_ssim``; our networks and dataset are not registered in BasicSR's
registries, since our networks take a prior batch that BasicSR's ``SRModel`` / ``PairedImageDataset``
pipeline cannot build. Training runs through :mod:`restoration.train` (the run engine's safe
checkpoints, resume and config checks); a BasicSR user can still import the networks
(``from restoration.archs import SAMDeblurNet``) and call them as ``network(lq, prior)``.
"""
