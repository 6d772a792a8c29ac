//! Layers and numerics, from the bottom up: [`ops`] (broadcasting element-wise ops for the CPU
//! backend's fast kernels) and the [`fused`] kernels with their own backward pass; [`amp`], mixed
//! precision on top of them; [`nn`], the layers models are built from, on top of both. No module
//! here imports one above it.

pub mod amp;
pub mod fused;
pub mod nn;
pub mod ops;
