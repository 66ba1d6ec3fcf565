//! ds4: DeepSeek V4 Flash inference as a library. GGUF files in, logits and text out.
//!
//! The data flows forward through the modules (DESIGN.md): `gguf` → `quant` → `model`
//! (config, weights, forward) → `backend` → `session`; text goes through `tokenizer`, `chat`
//! and `sample`; `kvstore` keeps snapshots on disk; `engine` ties a model, a backend and a live session into the generation loop
//! the CLI and the server share; `tiny` generates models with the real layout for tests.
//! No HTTP and no CUDA here.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod engine;
pub mod gguf;
pub mod kvstore;
pub mod model;
pub mod pin;
pub mod quant;
pub mod sample;
pub mod session;
pub mod synth;
pub mod tiny;
pub mod tokenizer;
