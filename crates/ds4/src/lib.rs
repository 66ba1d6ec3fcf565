//! ds4: DeepSeek V4 Flash inference as a library. GGUF files in, logits and text out.
//!
//! The data flows forward through the modules (DESIGN.md): `gguf` → `quant` → `model`
//! (config, weights, forward) → `backend` → `session`; text goes through `tokenizer`, `chat`
//! and `sample`. No HTTP and no CUDA here.
#![deny(unsafe_code)]

pub mod backend;
pub mod chat;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod sample;
pub mod session;
pub mod tiny;
pub mod tokenizer;
