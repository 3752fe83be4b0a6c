"""Drop-in modules: RNN and GRU (torch.nn replacements) and the zoo's fused cell."""
from hnrnn.nn.rnn import GRU, RNN  # noqa: F401
