"""meshagent: the daemon on every VM."""

import meshcore  # noqa: F401  (first: the environment gRPC reads when it loads)
