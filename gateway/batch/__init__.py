"""The Batch API (docs/batch.md): files (files.py, upload.py), batches (batches.py), input validation
(validate.py), the one runner across workers (runner.py) and one line through the live pipeline (line.py)."""
