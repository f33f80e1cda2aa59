"""polc: compile Kubernetes and Cilium network policy to verified eBPF."""

__version__ = "0.1.0"
