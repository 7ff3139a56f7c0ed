"""Image restoration with SAM / RobustSAM structure priors.

* :mod:`restoration.paired_data`: SOTS / GoPro pairs and the one crop rule; :mod:`restoration.datasets`:
  the pairs with their (cached) priors, aligned through crops and flips, as the prior batch every
  network reads.
* :mod:`restoration.archs`: NAFNet, SAM-Deblur and SAM-guided dehazing networks, all called as
  ``network(lq, prior)``; :mod:`restoration.mask_groups`: how masks become regions and mask dropout.
* the priors' label maps, structure maps and grayscale coding live in :mod:`robustprior.data.structure`.
* :mod:`restoration.config`: the options schema; :mod:`restoration.train`: the trainer / evaluator on
  the run engine (``python -m restoration.train --opt OPTIONS.yaml``); :mod:`restoration.restore`: a
  user's image or folder restored with a trained run and its own prior (the recipes' ``--restore``).
* :mod:`restoration.metrics`, :mod:`restoration.tiling`, :mod:`restoration.report`: PSNR / SSIM,
  tiled inference and Table-8-style reports; :mod:`restoration.table8`: the recipes (rows x seeds, control
  priors :mod:`restoration.control_priors`, :mod:`restoration.verdict`, :mod:`restoration.prior_quality`,
  :mod:`restoration.prior_reliance`).

BasicSR: metrics only, no registries
------------------------------------
We use BasicSR for its reference ``calculate_psnr`` / ``calculate_ssim`` and nothing else; our networks
and dataset are not registered in BasicSR's ``ARCH_REGISTRY`` / ``DATASET_REGISTRY``. An earlier
version registered them, but nothing in BasicSR ever ran them: our options use our own vocabulary
(``layout``, ``dataroot``, ``crop_size``, a prior section) and our networks take a prior batch that
BasicSR's ``SRModel`` / ``PairedImageDataset`` pipeline cannot build, so a registration only suggested
a compatibility that did not exist. Making it real would mean a BasicSR model class, a prior-aware
dataset in BasicSR's option vocabulary (``dataroot_gt`` / ``dataroot_lq``, ``gt_size``, ...) and a
second training loop beside ours, without the run engine's safe checkpoints, resume and config
checks. Training runs through :mod:`restoration.train`; a BasicSR user can still import the networks
(``from restoration.archs import SAMDeblurNet``) and call them as ``network(lq, prior)``.
"""
