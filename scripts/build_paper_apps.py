"""Write the paper's four applications as AppGraph JSON: ensemble, router, chain summary, and all three mixed.

The apps are built by ``samullm_lc.graph.paper_apps`` (see there, and ``docs/paper-apps.md``).

Usage: ``python scripts/build_paper_apps.py [--n 1000] [--seed 0] [--out examples/apps]`` writes
``ensemble.json``, ``router.json``, ``chain-summary.json`` and ``mixed.json`` (``NAME-nN.json`` when ``--n`` is
not the default 1,000).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.graph.paper_apps import DEFAULT_N, write_apps

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "examples" / "apps"


def main() -> None:
    """Parse arguments and write the apps."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="requests per node (prompts, or documents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")
    for path in write_apps(args.out, args.n, args.seed):
        app = AppGraph.load(path)
        requests = sum(node.num_requests for node in app.nodes)
        print(f"{path}: {len(app.nodes)} nodes, {len(app.models())} models, {requests} requests")


if __name__ == "__main__":
    main()
