"""Homomorphic aggregation with the Paillier cryptosystem (``--secure-aggregation paillier``)."""
