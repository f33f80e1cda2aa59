"""polc.compiler."""
