"""`make benchmark`: the end-to-end benchmark (world, teacher, curation, trainings, evaluation, report) and the
throughput scripts beside it."""
