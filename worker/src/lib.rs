//! `textrec-worker`: one binary for every job that touches the network.
//!
//! - `train`: one resumable training trial;
//! - `eval`: CER/WER of a model over a tesstrain folder;
//! - `recognize`: text of images, in-process or from a running server;
//! - `serve`: the gRPC + HTTP inference server with its demo page;
//! - `synth`: rendered lines written as a tesstrain folder;
//! - `lm`: a character language model added to a model folder.
//!
//! [`datasets`] makes data sets at storage URLs local, for `train` and `eval` alike.

pub mod datasets;
pub mod device;
pub mod eval;
pub mod lm;
pub mod logging;
pub mod model_source;
pub mod recognize;
pub mod serve;
pub mod synth;
pub mod train;
