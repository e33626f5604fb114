"""Stanch control plane (signing, rollouts, fleet channel). Never imported by the agent.

Importing it first imports ``agent.fleet``, which turns gRPC's fork support off before grpc
loads (see there: a forked child can die before ``exec`` otherwise).
"""

import agent.fleet  # noqa: F401  (sets GRPC_ENABLE_FORK_SUPPORT before grpc is imported)
