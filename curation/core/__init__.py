"""The shard contract and how any stage runs: errors, shard I/O, folder locks, the stage runner, placement."""
