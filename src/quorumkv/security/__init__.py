"""Transport security (TLS certificates and contexts) and authentication (users, roles,
tokens) of a quorumkv node and its clients."""
