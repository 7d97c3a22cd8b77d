"""The Bradley-Terry router: the model, its training and evaluation, and serving it (LRU, batching, HTTP)."""
