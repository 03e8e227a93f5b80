"""Talking to the vLLM servers: pooled HTTP clients, error translation and SSE relay."""
