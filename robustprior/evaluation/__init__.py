"""Evaluation: segmentation metrics and the paired bootstrap (:mod:`.metrics`), the paper's Table-2
report (:mod:`.evaluate`), figures (:mod:`.visualize`) and the automatic-mask settings search of the
bundled models (:mod:`.amg_settings`)."""
