//! The pretrained model in `models/`: intact, and still reading its check sets at the CER
//! recorded when it was trained. A change to preprocessing, rendering-independent decoding or the
//! network code that breaks the shipped model fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use textrec_contract::manifest::sha256_hex;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// `models/small/check.json`: the check sets (committed tesstrain folders) and their CER.
#[derive(Deserialize)]
struct Check {
    /// Largest accepted difference from a recorded CER (CPUs with other vector units may round
    /// a few logits differently).
    tolerance: f64,
    sets: std::collections::BTreeMap<String, CheckSet>,
}

#[derive(Deserialize)]
struct CheckSet {
    /// Folder relative to `models/small/`.
    data: String,
    cer: f64,
    lines: usize,
}

#[test]
fn files_match_the_pinned_sha256_sums() {
    let sums = std::fs::read_to_string(models_dir().join("SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once("  ").expect("`sha256  path` lines");
        let content = std::fs::read(models_dir().join(name)).unwrap();
        assert_eq!(sha256_hex(&content), sum, "{name} changed");
        checked += 1;
    }
    assert!(
        checked >= 2,
        "SHA256SUMS names the manifest and the weights"
    );
    // The manifest's own digest agrees, so the model loads (LoadedModel verifies it).
    let manifest: textrec_contract::ModelManifest =
        serde_json::from_slice(&std::fs::read(models_dir().join("small/manifest.json")).unwrap())
            .unwrap();
    let weights = std::fs::read(models_dir().join("small/model.safetensors")).unwrap();
    assert_eq!(manifest.files[0].sha256, sha256_hex(&weights));
}

#[test]
fn reads_its_check_sets_at_the_recorded_cer() {
    let small = models_dir().join("small");
    let check: Check =
        serde_json::from_slice(&std::fs::read(small.join("check.json")).unwrap()).unwrap();
    assert!(check.sets.len() >= 2, "training-fonts and unseen-fonts");
    for (name, set) in &check.sets {
        // The model users get when they name none: the one built into the binary.
        let out = Command::new(env!("CARGO_BIN_EXE_textrec-worker"))
            .args([
                "eval",
                "--json",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--data",
            ])
            .arg(small.join(&set.data))
            .env_remove("TEXTREC_LOG_JSON")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(result["lines"].as_u64(), Some(set.lines as u64), "{name}");
        let cer = result["cer"].as_f64().unwrap();
        assert!(
            (cer - set.cer).abs() <= check.tolerance,
            "{name}: CER {cer:.4}, recorded {:.4}",
            set.cer
        );
        // The line confidence tells the lines read wrong (0.94 and 0.98 when recorded): what
        // a review threshold relies on.
        let auroc = result["confidence"]["auroc"].as_f64().unwrap();
        assert!(auroc >= 0.85, "{name}: confidence AUROC {auroc:.3}");
    }
}
