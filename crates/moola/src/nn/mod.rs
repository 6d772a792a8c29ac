//! PyTorch-layout building blocks whose parameter names match `torch.nn` state dicts.
