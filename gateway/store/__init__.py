"""PostgreSQL: the `llm` schema's tables (models.py), the engine and sessions (db.py), and the stores on top."""
