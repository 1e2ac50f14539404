"""The indexing job (reader -> embedder -> writer), its checkpoints, the versioned bundle and metadata store."""
