"""The benchmark's teacher CLIP: shipped here (weights, record, recipe), the code that makes it and checks the copy."""
