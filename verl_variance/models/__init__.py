"""Model builders (tiny local models for tests and the quick demo)."""
