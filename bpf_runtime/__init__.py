"""polc.bpf_runtime."""
