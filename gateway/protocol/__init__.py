"""OpenAI wire models, one module per endpoint family; only the fields the gateway forwards are declared."""
