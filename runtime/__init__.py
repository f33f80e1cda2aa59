"""polc.runtime."""
