"""Image restoration with SAM / RobustSAM structure priors.

* :mod:`restoration.paired_data`: SOTS / GoPro pairs; :mod:`restoration.datasets`: the pairs with
  their (cached) priors, aligned through crops and flips.
* :mod:`restoration.archs`: NAFNet, SAM-Deblur and SAM-guided dehazing networks (basicsr ARCH_REGISTRY).
* the priors' label maps, structure maps, grayscale coding and mask dropout live in
  :mod:`robustprior.data.structure` (the prior side owns its representations).
* :mod:`restoration.train`: the trainer / evaluator (``python -m restoration.train --opt OPTIONS.yaml``).
* :mod:`restoration.metrics`, :mod:`restoration.tiling`, :mod:`restoration.report`: PSNR / SSIM,
  tiled inference and Table-8-style reports.
"""
