//! The one-layer model and batch of the loss-scaling tests (`grad_scaler.rs`), generic over the
//! backend so that `wgpu.rs` runs the same step on burn-wgpu.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    pub linear: Linear<B>,
}

impl<B: Backend> Net<B> {
    pub fn new(device: &B::Device) -> Self {
        let weight = vec![0.5f32, -0.25, 0.125, 1.0, 0.75, -0.5];
        Self {
            linear: Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(weight, [3, 2]),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![0.1f32, -0.2], [2]),
                    device,
                ))),
            },
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        kiln::amp::linear_layer(&self.linear, x)
    }

    pub fn weights(&self) -> Vec<f32> {
        linear_weights(&self.linear)
    }
}

/// A linear layer's weight then bias values.
pub fn linear_weights<B: Backend>(linear: &Linear<B>) -> Vec<f32> {
    let mut w = linear.weight.val().into_data().to_vec::<f32>().unwrap();
    if let Some(b) = &linear.bias {
        w.extend(b.val().into_data().to_vec::<f32>().unwrap());
    }
    w
}

/// The mean squared error on a fixed batch of three, the targets multiplied by `scale_targets`.
/// At `scale_targets` 1 the largest gradient is 2.2 (on `linear.weight`): under `16-mixed` its
/// value scaled by the default 2^16 overflows f16 (the first step is skipped, as in PyTorch), so
/// the single-step tests scale by 2^10.
pub fn loss<B: Backend>(model: &Net<B>, scale_targets: f32, device: &B::Device) -> Tensor<B, 1> {
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(
            vec![1.0f32, 2.0, -1.0, 0.5, -0.5, 1.5, -2.0, 1.0, 0.25],
            [3, 3],
        ),
        device,
    );
    let y = Tensor::<B, 2>::from_data(
        TensorData::new(vec![1.0f32, -1.0, 2.0, 0.0, -0.5, 1.5], [3, 2]),
        device,
    )
    .mul_scalar(scale_targets);
    (model.forward(x).cast(burn::tensor::FloatDType::F32) - y)
        .square()
        .mean()
}
