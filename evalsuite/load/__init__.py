"""Where a cell's model comes from: alias, hub id or local directory -> a ``ModelRef`` (cheap, fingerprinted) ->
(model, tokenizer). Owns the caches under ``$EVALSUITE_CACHE`` (default ``~/.cache/evalsuite``): the bundled GGUF
converted once into a checkpoint, and packed checkpoints built once per config; both are built under a lock into a
temporary directory and renamed into place.

May import: quant (packed-checkpoint loaders and builders), evalsuite.errors, evalsuite.records.provenance.
"""
