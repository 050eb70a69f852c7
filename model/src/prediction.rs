//! What reading a line gives: its text and how sure the network was of it.

/// The reading of one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The recognized text.
    pub text: String,
    /// Geometric mean of the probabilities of every emitted token, the final EOS included
    /// (0 when nothing at all was emitted).
    pub confidence: f32,
    /// Probability of each character of `text`.
    pub char_confidences: Vec<f32>,
}
