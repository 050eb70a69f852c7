//! `textrec-worker recognize`: print the text of images, as `PATH<TAB>TEXT` lines.
//!
//! ```text
//! textrec-worker recognize line1.png line2.png                 # the built-in pretrained model
//! textrec-worker recognize --model ./out/model line1.png line2.png
//! textrec-worker recognize --endpoint grpc://localhost:50051 line1.png
//! textrec-worker recognize --endpoint grpcs://ocr.example:443 --ca-cert ca.crt \
//!     --token-file token line1.png
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use textrec_contract::exit::{self, ConfigError};

/// Arguments of `recognize`.
#[derive(Args, Debug)]
pub struct RecognizeArgs {
    /// The model to run in this process: a model folder (URL or path) or `builtin:NAME`.
    /// Default: the built-in pretrained model (`builtin:small`).
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<String>,
    /// A running `textrec-worker serve` to ask instead: `grpc://host:port`, or
    /// `grpcs://host:port` for TLS (see --ca-cert, --client-cert, --token-file).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// TLS and token settings for --endpoint.
    #[command(flatten)]
    pub security: crate::serve::client::ClientSecurity,
    /// Also print each line's confidence (a third column).
    #[arg(long)]
    pub confidence: bool,
    /// How the model runs in this process (not used with --endpoint).
    #[command(flatten)]
    pub run: crate::eval::LocalInference,
    /// How lines are read: `joint`, `attention`, `ctc` or `ctc-lm` (as `eval --decode`).
    /// Default: the model's own choice. Not with --endpoint (the server reads as it was
    /// started).
    #[arg(long, value_enum, conflicts_with = "endpoint")]
    pub decode: Option<crate::eval::DecodeArg>,
    /// `ctc-lm` search weights (as `eval`); not with --endpoint.
    #[command(flatten)]
    pub search: crate::eval::SearchArgs,
    /// Reading at several widths (as `eval`); not with --endpoint.
    #[command(flatten)]
    pub widths: crate::eval::WidthArgs,
    /// Image files of single text lines.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Run `recognize`; returns the process exit code.
pub fn run(args: RecognizeArgs) -> Result<i32> {
    let results: Vec<(PathBuf, Result<(String, f32)>)> = match (&args.model, &args.endpoint) {
        (model, None) => local(
            model
                .as_deref()
                .unwrap_or(crate::model_source::DEFAULT_MODEL),
            &args,
        )?,
        (None, Some(endpoint)) => {
            let precision = args.run.precision.precision;
            if args.search.any()
                || !args.widths.widths.is_empty()
                || precision != textrec_model::precision::ReadingPrecision::Fp32
            {
                bail!(ConfigError::new(
                    "--lm-alpha, --lm-beta, --beam, --lm-unsure-*, --widths and --precision (or TEXTREC_PRECISION) set how this process reads; with --endpoint the server reads as it was started"
                ));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let remote = rt.block_on(crate::serve::client::recognize_files_with(
                endpoint,
                &args.security,
                &args.images,
            ))?;
            remote
                .into_iter()
                .map(|r| (r.path, Ok((r.text, r.confidence))))
                .collect()
        }
        (Some(_), Some(_)) => bail!(ConfigError::new(
            "give at most one of --model and --endpoint"
        )),
    };
    let mut failed = 0;
    for (path, r) in results {
        match r {
            Ok((text, conf)) if args.confidence => {
                println!("{}\t{text}\t{conf:.3}", path.display())
            }
            Ok((text, _)) => println!("{}\t{text}", path.display()),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", path.display());
            }
        }
    }
    Ok(if failed == 0 {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

/// One image's outcome: its text and line confidence, or why it could not be read.
type Outcome = (PathBuf, Result<(String, f32)>);

/// Recognize with a model loaded into this process; per-image errors are kept per image.
fn local(model: &str, args: &RecognizeArgs) -> Result<Vec<Outcome>> {
    let mut model = args.run.load(model)?;
    crate::eval::set_reading(&mut model, args.decode, &args.search, &args.widths)?;
    let mut out = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.run.batch()) {
        let mut ok_paths = Vec::new();
        let mut images = Vec::new();
        for path in chunk {
            match image::open(path).with_context(|| format!("cannot read {}", path.display())) {
                Ok(img) => {
                    ok_paths.push(path.clone());
                    images.push(img.to_luma8());
                }
                Err(e) => out.push((path.clone(), Err(e))),
            }
        }
        match model.recognize(&images) {
            Ok(preds) => {
                for (p, pred) in ok_paths.into_iter().zip(preds) {
                    out.push((p, Ok((pred.text, pred.confidence))));
                }
            }
            // One bad image (too large, say) fails its batch: retry alone to isolate it.
            Err(_) => {
                for (p, img) in ok_paths.into_iter().zip(images) {
                    let r = model
                        .recognize(std::slice::from_ref(&img))
                        .map(|mut v| v.remove(0))
                        .map(|pred| (pred.text, pred.confidence));
                    out.push((p, r));
                }
            }
        }
    }
    // Keep the order the user gave.
    out.sort_by_key(|(p, _)| {
        args.images
            .iter()
            .position(|q| q == p)
            .unwrap_or(usize::MAX)
    });
    Ok(out)
}
