"""The data plane: an OpenAI-compatible router that applies traffic plans.

Stateless by design: every decision is a pure function of the plan and the
request, so any number of replicas agree on where a user's requests go.
"""
