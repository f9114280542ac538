"""Differentiable ops by family; each op is one class holding its forward and its backward."""
