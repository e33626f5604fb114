"""Loaded before any test module: gRPC's fork support off before grpc is imported, by the same
import that does it for the agent and the control plane (``agent.fleet``, which says why). Tests
run gRPC in-process and start processes with ``preexec_fn``; with fork support on, such a child
can die before ``exec`` with "epoll_wait error: Bad file descriptor" (grpc/grpc#43055)."""

import agent.fleet  # noqa: F401  (sets GRPC_ENABLE_FORK_SUPPORT before grpc is imported)
