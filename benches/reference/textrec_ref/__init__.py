"""A PyTorch reference of textrec's recognizer (see model.py) and its preprocessing."""
