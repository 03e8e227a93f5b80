"""Redis for tests: filled in by the Redis work (fixtures redis_server, redis_url)."""
