//! dml-models: the two image classifiers a dml node serves, in pure Rust: candle tensors
//! at the edges, our own CPU kernels inside.
//!
//! Map of the crate:
//! - [`weights`]: which networks exist ([`Network`]), their tensor lists, loading and
//!   validating `.safetensors` / `.pth` files, synthetic weights, fetching from the Hub.
//! - [`resnet50`], [`inception_v3`]: the networks, built from validated weights with
//!   BatchNorm folded into the convolutions. They do no file or device work.
//! - `kernels` (NHWC convolution tiling, pooling), `packed_gemm` (the AVX-512
//!   micro-kernel), `winograd` (F(4x4) / F(2x2) 3x3 convolutions): the compute, chosen
//!   per network with [`Kernels`]; `team` (the threads that run their parallel loops).
//!   The only modules allowed `unsafe` (raw SIMD, disjoint output tiles shared across
//!   threads, the team's type-erased loop body).
//! - [`preprocess`]: bytes -> normalised CHW tensor, the way torchvision does it.
//! - [`labels`]: the 1000 ImageNet class names.
//! - [`classifier`]: a loaded network plus a thread pool; batches in, top-5 out.
//! - [`error`]: [`ModelError`], the one error type of this layer.
#![deny(unsafe_code)]

mod amx;
pub mod classifier;
pub mod cli;
pub mod error;
pub mod inception_v3;
mod kernels;
pub mod labels;
mod layers;
mod packed_gemm;
pub mod preprocess;
mod qgemm;
pub mod resnet50;
mod team;
pub mod weights;
mod winograd;

pub use classifier::{BatchOutput, Classifier, Prediction, TopClass};
pub use error::ModelError;
pub use kernels::{fp32_peak_gflops, Kernels, Precision};
pub use weights::{Network, Weights};
