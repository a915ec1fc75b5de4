"""Schemathesis drives the HTTP API from the live node's own /openapi.json.

One 3-node cluster serves the module; the requests go to a follower, so
that everything the follower sends on to the leader is exercised too.
Schemathesis generates valid and invalid requests (its positive and
negative modes, plus the boundary values of its coverage phase) for every
operation but those in NOT_FUZZED, and every answer must be free of server
errors (no 5xx), carry a
documented status and content type, and match the response schema the
document gives; invalid requests must be refused (4xx), and undocumented
methods answered 405. Generation is seeded and derandomized, so a run is
repeatable, and bounded in examples: about two thousand requests, well
under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from cluster_harness import Cluster, running_cluster, wait_until
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from quorumkv.client.fields import MAX_INT64
from quorumkv.etcd import gateway as etcd_gateway
from quorumkv.server import http_server, openapi

if TYPE_CHECKING:
    from quorumkv.server.node import Node

pytestmark = pytest.mark.timeout(600)

SEED = 20240601
MAX_EXAMPLES = 12
"""Per operation and generation mode in the fuzzing phase; the coverage phase adds its own
(deterministic) boundary cases."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, unsupported_method]


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only: never through a proxy from the environment
    return session


def _ready(cluster: Cluster) -> bool:
    with _session() as session:
        return all(session.get(n.http_url + "/ready", timeout=10).status_code == 200
                   for n in cluster.nodes)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    # A token no generated request will guess, so membership calls are all refused
    # (401) and the cluster under test keeps its members.
    config = tmp / "node.toml"
    config.write_text('cluster_token = "fuzz-token-not-in-any-example-91c4"\n')
    with running_cluster(tmp, extra=["--config", str(config)]) as c:
        c.leader_name()
        # An HTTP port opens after its client port: refused for a moment is "not yet".
        wait_until(lambda: _ready(c), what="every node ready", ignore=(OSError,))
        yield c


@pytest.fixture(scope="module")
def follower_url(cluster: Cluster) -> str:
    leader = cluster.leader_name()
    return next(n for n in cluster.nodes if n.name != leader).http_url


CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 60,
})
# Generation needs the document at collection time, before any node runs, so it is built
# by the code every node serves it from; test_the_live_document_is_the_one_fuzzed checks
# that a live node's /openapi.json is exactly this document.
NOT_FUZZED = (
    # An event stream answers 200 and then never ends: no generated request can wait for
    # its whole body. tests/integration/test_http_api.py covers it.
    "/v1/watch",
    # /ready answers 503 by design while a node applies what it knows is committed, which
    # a busy cluster does for a moment now and then.
    "/ready",
    # etcd's gateway streams (watch, lease keep-alive, snapshot): lines of JSON, a watch's
    # never ending. tests/integration/test_etcd_gateway.py covers them.
    *etcd_gateway.STREAMING_PATHS,
)
# Everything else is fuzzed, /metrics, /v1/events, /v1/stats and the dashboard's page and
# files (text, checked for status and content type) included.
schema = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG)
for _path in NOT_FUZZED:
    schema = schema.exclude(path=_path)
REDIRECTS = {("get", "/dashboard"), ("get", "/dashboard/")}
"""Served but not documented: they only send a browser on to the dashboard at /."""


def test_the_live_document_is_the_one_fuzzed(follower_url: str) -> None:
    with _session() as session:
        live = session.get(follower_url + "/openapi.json", timeout=30).json()
    assert live == json.loads(json.dumps(openapi.document()))


def test_every_route_is_documented_and_fuzzed() -> None:
    """A route added to the server without its path item in the document (or left out of
    the fuzzing by mistake) fails here."""
    served: set[tuple[str, str]] = set()
    for source in http_server.route_sources():
        for route in source(cast("Node", None)):
            assert isinstance(route, web.RouteDef)
            served.add((route.method.lower(), route.path))
    documented = {(method, path) for path, item in openapi.document()["paths"].items()
                  for method in item}
    assert served - REDIRECTS == documented
    fuzzed = {(op.method, op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert fuzzed == {(m, p) for m, p in documented if p not in NOT_FUZZED}
    assert {("get", "/metrics"), ("get", "/v1/events"), ("get", "/v1/stats"), ("get", "/"),
            ("get", "/dashboard/{name}")} <= fuzzed


def _settle(case: schemathesis.Case) -> None:
    """A session read waits for ``min_revision`` to exist, up to the request timeout,
    then answers 504 by design; a generated revision far beyond the store's is such a
    wait. Such reads are asked for revision 0 here (always there)."""
    for params in (case.query, case.body):
        if not isinstance(params, dict) or params.get("consistency") != "session":
            continue
        wanted = params.get("min_revision")
        # Only a valid revision: an invalid one (a negative case) must stay invalid.
        if type(wanted) is int and 0 < wanted <= MAX_INT64:
            params["min_revision"] = 0


@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                     deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_answer_matches_the_document_and_none_is_a_server_error(
        case: schemathesis.Case, follower_url: str) -> None:
    _settle(case)
    with _session() as session:
        case.call_and_validate(base_url=follower_url, session=session, checks=CHECKS)
