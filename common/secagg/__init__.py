"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020): pure logic, no I/O.

``quantize`` turns float updates into integers mod 2^32, ``shamir`` shares secrets, ``crypto`` wraps the
primitives (X25519, HKDF, AES-GCM, ChaCha20 as the mask PRG, advert signatures), ``graph`` picks mask
partners, ``messages`` are the wire types and ``protocol`` the client and server state machines.
"""
