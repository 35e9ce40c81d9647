"""Start a local loopback cluster, print its address as JSON, and keep it running
until standard input closes. The tests use it as "a cluster someone else started"."""

import json
import sys

import helpers

# Shaped as the notebooks shape their own (three nodes), with the dashboard, which the
# state API needs, as a reader's cluster would have it.
cluster = helpers.start_or_join(None, worker_nodes=2, dashboard=True, quiet=True)
print(json.dumps({"address": cluster.address, "nodes": len(cluster.nodes())}), flush=True)
sys.stdin.read()
cluster.shutdown()
