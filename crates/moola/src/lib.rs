//! # moola: classifiers of fixed-length OHLC market windows, on Burn
//!
//! A Rust re-implementation of the deep-learning core of HeinekenBottle/moola.

pub mod augment;
pub mod bench;
pub mod classifier;
pub mod cli;
pub mod config;
pub mod data;
pub mod import;
pub mod loss;
pub mod model;
pub mod nn;
pub mod train;

pub use classifier::Classifier;
