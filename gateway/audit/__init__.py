"""The audit log: records made per request, batched into PostgreSQL, spooled to disk when it is away."""
