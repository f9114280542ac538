"""What a run leaves behind besides weights: scores, tables, pictures and TensorBoard events."""
