"""tforge ops: each module holds the op's pure-PyTorch reference (``<op>_ref``),
its torch.library custom op with fake impl and autograd, and backend dispatch."""
