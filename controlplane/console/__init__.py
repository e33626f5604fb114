"""The operator console: the fleet, rollouts, toil and approvals on server-rendered web pages.

Starlette + Jinja2, no front-end build. ``controlplane.console.app.create_app`` builds the
application around a running control plane; ``controlplane.console.serve.ConsoleServer`` runs it
with uvicorn in the control-plane process (``stanch-cp --console-listen HOST:PORT``). See
``docs/console.md``.
"""
