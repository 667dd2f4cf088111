"""Where a stage's shards run: here (in process, a process pool, one worker per GPU) or on a Ray cluster."""
