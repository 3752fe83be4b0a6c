"""Drop-in modules: RNN and GRU (torch.nn replacements) and the zoo's fused cell."""
