"""Where shards come from: the synthetic semantic-gap world (real URL lists: `curation/download.py`)."""
