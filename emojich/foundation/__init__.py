"""The foundation every part of the pipeline stands on: atomic storage and hashes, tar shards, the data
layout, provenance records, progress bars and logs, params, devices, input checks, `torch.distributed`.

Imports nothing else from `emojich`: any part may use it, it uses no part.
"""
