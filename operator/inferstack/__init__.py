"""inferstack: model, prompt, retriever, tools and cache deployed as one unit."""

GROUP = "inferstack.dev"
VERSION = "v1alpha1"
KIND = "InferenceStack"
PLURAL = "inferencestacks"

__version__ = "0.1.0"
