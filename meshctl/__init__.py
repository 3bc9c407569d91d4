"""meshctl: the command line over meshd's gRPC API and the agent's local socket."""

import meshcore  # noqa: F401  (first: the environment gRPC reads when it loads)
