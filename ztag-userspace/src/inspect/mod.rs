//! AI content inspection: the prompt-injection detector (normalisation,
//! signatures, a trained classifier) and the response content filter (PII
//! and secrets), with the body codecs that find the text to inspect in
//! OpenAI, Anthropic and MCP messages and SSE streams.

pub mod classifier;
pub mod dataset;
pub mod detector;
pub mod normalize;
pub mod signatures;
pub mod train;

pub use detector::{Detector, Verdict};
