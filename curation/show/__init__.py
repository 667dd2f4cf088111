"""`cocu-curate show`: a static HTML gallery of curated shards and its summary page."""
