"""Loaded before any test module: gRPC's fork support off before grpc is imported (the same
setting ``agent.fleet`` makes for the agent and the control plane). Tests run gRPC in-process and
start processes with ``preexec_fn``; with fork support on, such a child can die before ``exec``
with "epoll_wait error: Bad file descriptor" (grpc/grpc#43055)."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
