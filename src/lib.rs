//! bertcls: BERT text classification with a frozen encoder and a trained linear head.
//!
//! The encoder forward (`model::encoder`) is written once against the ops of
//! `backend::Backend`; `backend::cpu` is the pure-Rust reference and `backend::cuda`
//! the GPU implementation. The head (`head`, `optim`) trains on cached [CLS] or mean features.

pub mod backend;
pub mod batch;
pub mod calibration;
pub mod checkpoint;
pub mod chunk;
pub mod cli;
pub mod data;
pub mod features;
pub mod fsio;
pub mod head;
pub mod hub;
pub mod le_floats;
pub mod model;
pub mod optim;
pub mod safetensors_out;
pub mod tokenize;
pub mod train;
