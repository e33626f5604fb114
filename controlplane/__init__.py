"""Stanch control plane (signing, rollouts, fleet channel). Never imported by the agent."""
