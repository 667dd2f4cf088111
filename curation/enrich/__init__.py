"""`cocu-curate enrich`: every row's concept archive from its neighbours, ranked and clustered, into curated shards."""
