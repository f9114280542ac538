"""Fused NumPy kernels of the nn layers: each op's forward and backward side by side."""
