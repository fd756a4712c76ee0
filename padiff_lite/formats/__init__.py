"""Checkpoint files on disk, one module per job: :mod:`.files` (a checkpoint: format by suffix, metadata, tensors,
writers), one module per format (:mod:`.safetensors`, :mod:`.torchfile`, :mod:`.pdparams` with its pickle reader
and writer :mod:`.pdparams_pickle`), :mod:`.index` (HuggingFace indexes), :mod:`.common` (what they share),
:mod:`.pickle_bounds` (bounds on an untrusted pickle) and :mod:`.output` (output files, committed all or nothing)."""
