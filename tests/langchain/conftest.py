"""Fixtures for the LangChain drop-in's acceptance tests: reference ``vllm serve`` servers on loopback.

Run these tests under ``flock /tmp/samullm-engine.lock`` on a shared machine (one engine-running job at a time).
"""

from collections.abc import Callable, Iterator

import pytest
from reference_servers import ReferenceServerPool


@pytest.fixture(scope="session")
def reference_server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceServerPool]:
    """At most two reference servers (one per core) for the whole session, swapped as tests need other models;
    logs under the session's temporary folder (``reference-servers``)."""
    with ReferenceServerPool(log_dir=tmp_path_factory.mktemp("reference-servers")) as pool:
        yield pool


@pytest.fixture
def reference_urls(reference_server_pool: ReferenceServerPool) -> Callable[[list[str]], dict[str, str]]:
    """``reference_urls(["tiny-llama-s", "tiny-llama-m"])`` -> ``{model: "http://127.0.0.1:PORT/v1"}``, the servers
    for exactly those models running (at most two)."""
    return reference_server_pool.urls
