//! The Open Inference Protocol (KServe V2) over gRPC, so KServe and Triton clients can call
//! textrec unchanged.
//!
//! The model is named [`MODEL_NAME`]. Its one input is a BYTES tensor of encoded images (any
//! shape; one image per element), sent as `contents.bytes_contents` or as
//! `raw_input_contents` (each element a 4-byte little-endian length, then the bytes). Outputs,
//! shaped like the input: `TEXT` (BYTES) and `CONFIDENCE` (FP32). Raw inputs get raw outputs,
//! as Triton does.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::grpc::request_deadline;
use super::limits::ServeError;
use super::proto::inference as pb;
use super::state::ServeState;

/// Name of the model in the protocol.
pub const MODEL_NAME: &str = "textrec";
/// Name of the input tensor (any single BYTES input is accepted).
pub const INPUT_NAME: &str = "IMAGE";
/// Output tensor of recognized text.
pub const OUTPUT_TEXT: &str = "TEXT";
/// Output tensor of line confidences.
pub const OUTPUT_CONFIDENCE: &str = "CONFIDENCE";
/// Most images in one ModelInfer call.
pub const MAX_ELEMENTS: usize = 256;

/// The GRPCInferenceService implementation.
pub struct KServeService {
    state: Arc<ServeState>,
}

impl KServeService {
    /// The service over shared state.
    pub fn new(state: Arc<ServeState>) -> Self {
        Self { state }
    }

    fn check_model(&self, name: &str, version: &str) -> Result<String, Status> {
        if name != MODEL_NAME {
            return Err(Status::not_found(format!(
                "unknown model `{name}`; this server serves `{MODEL_NAME}`"
            )));
        }
        let m = self
            .state
            .slot
            .current()
            .ok_or_else(|| Status::unavailable("no model is loaded yet"))?;
        let served = m.engine.version().to_string();
        if !version.is_empty() && version != served {
            return Err(Status::not_found(format!(
                "model version `{version}` is not served; serving `{served}`"
            )));
        }
        Ok(served)
    }
}

/// Split a raw BYTES tensor into its elements.
pub fn split_raw_bytes(raw: &[u8]) -> Result<Vec<bytes::Bytes>, ServeError> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(ServeError::InvalidArgument(
                "raw BYTES tensor: truncated length prefix".into(),
            ));
        }
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < n {
            return Err(ServeError::InvalidArgument(format!(
                "raw BYTES tensor: element of {n} bytes but only {} remain",
                rest.len()
            )));
        }
        out.push(bytes::Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    Ok(out)
}

/// Join elements into a raw BYTES tensor.
pub fn join_raw_bytes<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for b in items {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for KServeService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = !self.state.is_shutting_down() && self.check_model(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "textrec".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let version = self.check_model(&r.name, &r.version)?;
        let tensor = |name: &str, datatype: &str| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![-1],
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: MODEL_NAME.into(),
            versions: vec![version],
            platform: "textrec_libtorch".into(),
            inputs: vec![tensor(INPUT_NAME, "BYTES")],
            outputs: vec![
                tensor(OUTPUT_TEXT, "BYTES"),
                tensor(OUTPUT_CONFIDENCE, "FP32"),
            ],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = request_deadline(&req, self.state.default_timeout);
        let r = req.into_inner();
        self.check_model(&r.model_name, &r.model_version)?;
        let invalid = |m: String| Status::from(ServeError::InvalidArgument(m));
        if r.inputs.len() != 1 {
            return Err(invalid(format!(
                "expected one input tensor ({INPUT_NAME}, BYTES), got {}",
                r.inputs.len()
            )));
        }
        let input = &r.inputs[0];
        if input.datatype != "BYTES" {
            return Err(invalid(format!(
                "input `{}` has datatype {}; send encoded images as BYTES",
                input.name, input.datatype
            )));
        }
        let raw = !r.raw_input_contents.is_empty();
        let images = if raw {
            split_raw_bytes(&r.raw_input_contents[0])?
        } else {
            input
                .contents
                .as_ref()
                .map(|c| c.bytes_contents.clone())
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect()
        };
        check_shape(&input.name, &input.shape, images.len())?;
        if images.is_empty() || images.len() > MAX_ELEMENTS {
            return Err(invalid(format!(
                "send 1 to {MAX_ELEMENTS} images, got {}",
                images.len()
            )));
        }
        let wanted: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        if let Some(bad) = wanted
            .iter()
            .find(|n| **n != OUTPUT_TEXT && **n != OUTPUT_CONFIDENCE)
        {
            return Err(invalid(format!(
                "unknown output `{bad}` (outputs: {OUTPUT_TEXT}, {OUTPUT_CONFIDENCE})"
            )));
        }
        let results = self
            .state
            .recognize_call(images, deadline, "kserve")
            .await?;
        // The protocol has one status per call: the first failure fails it.
        let results = results
            .into_iter()
            .collect::<Result<Vec<_>, ServeError>>()?;
        let version = results[0].model_version.clone();
        let texts: Vec<&[u8]> = results.iter().map(|r| r.text.as_bytes()).collect();
        let confidences: Vec<f32> = results.iter().map(|r| r.confidence).collect();
        let want = |n: &str| wanted.is_empty() || wanted.contains(&n);
        let mut outputs = Vec::new();
        let mut raw_out = Vec::new();
        let tensor =
            |name: &str, datatype: &str, contents| pb::model_infer_response::InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape: input.shape.clone(),
                parameters: Default::default(),
                contents,
            };
        if want(OUTPUT_TEXT) {
            if raw {
                raw_out.push(join_raw_bytes(texts.iter().copied()));
                outputs.push(tensor(OUTPUT_TEXT, "BYTES", None));
            } else {
                let c = pb::InferTensorContents {
                    bytes_contents: texts.iter().map(|t| t.to_vec()).collect(),
                    ..Default::default()
                };
                outputs.push(tensor(OUTPUT_TEXT, "BYTES", Some(c)));
            }
        }
        if want(OUTPUT_CONFIDENCE) {
            if raw {
                raw_out.push(confidences.iter().flat_map(|c| c.to_le_bytes()).collect());
                outputs.push(tensor(OUTPUT_CONFIDENCE, "FP32", None));
            } else {
                let c = pb::InferTensorContents {
                    fp32_contents: confidences,
                    ..Default::default()
                };
                outputs.push(tensor(OUTPUT_CONFIDENCE, "FP32", Some(c)));
            }
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: MODEL_NAME.into(),
            model_version: version,
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw_out,
        }))
    }
}

/// The input's shape must be non-negative and hold exactly `elements` images. The product is
/// checked, so a shape whose product overflows is refused rather than wrapped into agreement.
fn check_shape(name: &str, shape: &[i64], elements: usize) -> Result<(), Status> {
    let product = shape.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    if product != Some(elements as i64) {
        return Err(Status::from(ServeError::InvalidArgument(format!(
            "input `{name}` has shape {shape:?} but {elements} elements"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_must_match_the_elements_without_overflow() {
        assert!(check_shape("IMAGE", &[2], 2).is_ok());
        assert!(check_shape("IMAGE", &[1, 3], 3).is_ok());
        assert!(check_shape("IMAGE", &[3], 2).is_err());
        assert!(check_shape("IMAGE", &[-1], 1).is_err());
        // 2^32 * 2^32 wraps to 0 in i64 arithmetic; 2^62 * 4 wraps to 0 as well.
        let e = check_shape("IMAGE", &[1 << 32, 1 << 32, 0], 0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(check_shape("IMAGE", &[1 << 62, 4, 1], 0).is_err());
        assert!(check_shape("IMAGE", &[i64::MAX, 2], 2).is_err());
    }

    #[test]
    fn raw_bytes_round_trip_and_reject_truncation() {
        let joined = join_raw_bytes([&b"ab"[..], &b""[..], &b"xyz"[..]]);
        let parts = split_raw_bytes(&joined).unwrap();
        assert_eq!(parts, vec![&b"ab"[..], &b""[..], &b"xyz"[..]]);
        assert!(split_raw_bytes(&joined[..joined.len() - 1]).is_err());
        assert!(split_raw_bytes(&[1, 0]).is_err());
    }
}
