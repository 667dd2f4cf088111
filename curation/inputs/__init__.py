"""Image-caption shards in: URL lists through img2dataset (download), webdataset tars (convert), the synthetic world."""
