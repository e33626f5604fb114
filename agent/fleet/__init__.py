"""The agent's side of the control-plane channel (``stanch.v1.Fleet``).

An agent with no ``control_plane:`` in its config never imports this package's client, so it
never loads grpcio or protobuf. With one configured, the runner builds an :class:`Outbox` (before
crash recovery, so interrupted executions are reported too) and starts a ``FleetClient`` thread.
Nothing in the agent's main loop waits on the network: reports go to the SQLite outbox, the
client drains it when it can, and a control plane that is down, partitioned or gone only means
reports wait (bounded; any loss counted) while the host keeps remediating on its active bundle.

- ``config``      the ``control_plane:`` section of the agent config (no network code)
- ``outbox``      the bounded, durable report queue in the journal; deleted only on ack
- ``assignment``  signed assignments: DSSE over pinned keys, host, monotonic sequence
- ``apply``       verify an assignment, fetch its bundle, install it, remember the sequence
- ``pause``       central pause/resume written to the local pause file (survives restarts)
- ``health``      the heartbeat's health summary from the agent's live state
- ``backoff``     jittered exponential reconnect delays
- ``wire``        conversions to and from the generated ``stanch.v1`` messages
- ``client``      ``FleetClient``: one long-lived bidi stream, in its own thread and event loop;
                  its session's tasks in ``client_session``, its channel and certificate in
                  ``client_channel``

Only ``wire`` and the client's modules import generated code; only the client's import grpc.

Importing this package turns gRPC's fork support off (``GRPC_ENABLE_FORK_SUPPORT=false``, unless
the environment already says otherwise), before grpc is loaded: with it on, grpcio restarts its
poller in every child *forked* while a channel is busy, and ``subprocess`` then closes that
poller's epoll descriptor before ``exec``; the child dies with "epoll_wait error: Bad file
descriptor" (grpc/grpc#43055). The agent forks (rather than vforks) for every ``run_as``
remediation (``user=``/``group=``), and measured 18-48 % of such children dying while its stream
was busy. Stanch never uses a gRPC channel across ``fork``, so it loses nothing.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
