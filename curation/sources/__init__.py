"""Where shards come from: the synthetic semantic-gap world (ingestion of real URL lists is `curation/ingest.py`)."""
