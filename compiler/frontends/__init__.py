"""polc.compiler.frontends."""
