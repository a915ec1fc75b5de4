"""etcd's v3 gRPC API on a port of its own (``serve --etcd-listen``).

One module per etcd service (kv_service.py; server.py ``SERVICES`` lists
them), sharing calls.py (errors as etcd's, timing, writes sent on to the
leader), identity.py (who a call is from), errors.py (etcd's codes and
texts) and header.py (the ResponseHeader). docs/etcd-compatibility.md says
what is served.
"""
