"""The sora2proxy test suite (runs under pytest and trial)."""
