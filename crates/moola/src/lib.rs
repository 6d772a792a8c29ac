//! # moola: classifiers of fixed-length OHLC market windows, on Burn
//!
//! A Rust re-implementation of the deep-learning core of HeinekenBottle/moola.

pub mod data;
pub mod model;
pub mod nn;
