"""meshctl: the command line over meshd's gRPC API and the agent's local socket."""
