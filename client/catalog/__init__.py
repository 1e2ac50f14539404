"""The catalog file format: rows, queries, JSONL/CSV reading and writing."""
