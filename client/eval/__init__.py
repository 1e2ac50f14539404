"""The relevance evaluation harness through the live stack, and its reports."""
