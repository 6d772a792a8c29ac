//! Files: crash-safe output ([`io`]), the model file convention of a card and weights
//! ([`artifact`]), and PyTorch's `torch.save` files ([`torch`], on a [`pickle`] reader that executes
//! nothing).

pub mod artifact;
pub mod io;
pub mod pickle;
pub mod torch;
