"""Text classification: CSV/TSV/JSONL texts or catalog texts -> one of K classes."""
