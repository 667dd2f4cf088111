"""`cocu-curate build-bank`: a corpus through a CLIP into one directory: embeddings, concept table, FAISS index."""
