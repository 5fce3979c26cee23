"""A stand-in for a vLLM OpenAI server: deterministic answers, vLLM metric names, no GPU.

It is the only fake in the test tiers: the router, Prometheus and the
official ``openai`` client in front of it are all real.
"""
