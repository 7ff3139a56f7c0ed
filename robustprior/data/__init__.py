"""Data: the scene world (:mod:`.scenes`), the 15 degradations (:mod:`.degrade`), instance-segmentation
sources and the RobustSAM dataset (:mod:`.datasets`, :mod:`.sources` for YAML data sections), prompt
sampling (:mod:`.prompts`), image reading (:mod:`.image_io`) and label / structure maps of masks
(:mod:`.structure`)."""
