"""meshd: the coordinator."""

import meshcore  # noqa: F401  (first: the environment gRPC reads when it loads)
