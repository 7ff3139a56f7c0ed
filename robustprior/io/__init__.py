"""Files: atomic writes (:mod:`.atomic`), model checkpoints in every supported format
(:mod:`.checkpoint`), downloads with SHA-256 checks (:mod:`.hub`), tensor checksums of cache files
(:mod:`.tensor_checksum`) and the ``robustprior segment`` output writers (:mod:`.mask_outputs`)."""
