"""polc.grammar."""
