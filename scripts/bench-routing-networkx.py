#!/usr/bin/env python3
"""Times networkx on the graph and queries exported by `qkdni bench routing --export FILE`.

Usage: bench-routing-networkx.py FILE
Prints one JSON object like the routing bench's: per policy, median / p99 per query (µs,
nearest rank) and the number of queries routed. The policies are networkx equivalents of
qkdni's: `shortest` = dijkstra_path on the link weight, `fewest-hops` = shortest_path
without weight (bidirectional BFS), `key-aware` = dijkstra_path with the key-aware cost,
links that cannot serve the demand left out (same demand as the Rust bench).
"""

import json
import math
import sys
import time

import networkx as nx

# Must match DEMAND_RATE_BPS and DEMAND_BITS in src/bench_routing.rs.
DEMAND_RATE_BPS = 500_000.0
DEMAND_BITS = 1_000_000.0


def key_aware_cost(_u, _v, link):
    """The key-aware cost of a link (controller-plugins/routing/src/key_aware.rs), or None
    when the link cannot serve the demand (networkx then leaves it out)."""
    rate, stock = link["key_rate_bps"], link["available_bits"]
    if rate < DEMAND_RATE_BPS or stock < DEMAND_BITS or (rate <= 0 and stock <= 0):
        return None
    b, r = max(DEMAND_BITS, 256.0), max(DEMAND_RATE_BPS, 1.0)
    return 1.0 + 2.0 * (b / (stock + b) + r / (rate + r))


def percentile(times, p):
    rank = min(max(math.ceil(p * len(times)), 1), len(times))
    return round(times[rank - 1] * 10) / 10


def time_policy(route, queries):
    times, routed = [], 0
    for src, dst in queries:
        started = time.perf_counter()
        try:
            route(src, dst)
            routed += 1
        except nx.NetworkXNoPath:
            pass
        times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    return {"median_us": percentile(times, 0.5), "p99_us": percentile(times, 0.99),
            "routed": routed}


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    graph = nx.node_link_graph(data, edges="links")
    queries = data["graph"]["queries"]
    policies = {
        "shortest": lambda s, t: nx.dijkstra_path(graph, s, t, weight="weight"),
        "fewest-hops": lambda s, t: nx.shortest_path(graph, s, t),
        "key-aware": lambda s, t: nx.dijkstra_path(graph, s, t, weight=key_aware_cost),
    }
    report = {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges(),
              "queries": len(queries), "networkx": nx.__version__,
              "policies": {name: time_policy(route, queries)
                           for name, route in policies.items()}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
