//! # reid: person re-identification and fashion retrieval with centroids, on Burn
//!
//! A Rust re-implementation of mikwieczorek/centroids-reid ("On the Unreasonable Effectiveness
//! of Centroids in Image Retrieval").

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod infer;
pub mod loss;
pub mod model;
pub mod tools;
pub mod train;
