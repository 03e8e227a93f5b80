"""Citadel LLM Server: an OpenAI-compatible gateway in front of vLLM CPU model servers."""

__version__ = "0.1.0"
