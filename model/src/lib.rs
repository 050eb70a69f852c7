//! The textrec OCR line recognizer: a ResNet encoder and a Transformer decoder in tch, plus
//! everything around it that training and serving must agree on (charset, preprocessing,
//! decoding, metrics, data sets, weight files).
//!
//! No Kubernetes and no networking here.

pub mod autocast;
pub mod batching;
pub mod calibration;
pub mod data;
pub mod inference;
pub mod lm;
pub mod metrics;
pub mod net;
pub mod precision;
pub mod prediction;
pub mod preprocess;
pub mod tensorio;
pub mod tokenizer;
pub mod widths;

pub use inference::LoadedModel;
pub use prediction::Prediction;
pub use tokenizer::Tokenizer;
