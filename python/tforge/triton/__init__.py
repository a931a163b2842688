"""Triton kernels and their launchers (imported lazily by the ops layer; importing this package needs no GPU)."""
