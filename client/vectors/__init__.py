"""Vector indexes behind one contract: FAISS (embedded) and Milvus (distributed)."""
