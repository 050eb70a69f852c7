//! Fine-tuning from a model: its preprocessing is taken, another network is refused.

use textrec_contract::metrics::{MetricsRecord, RecordKind};
use textrec_contract::ModelManifest;

use crate::harness::*;

#[test]
fn fine_tuning_starts_from_a_model_takes_its_preprocessing_and_refuses_another_network() {
    let (reference_dir, _) = reference();
    let model = reference_dir.path().join("model");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tuned");
    let tuned = run(train_cmd(
        &out,
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            "max_steps=10",
            // As drawn only: no width is compared (the reference run compares three).
            "--set",
            "reading_widths=[1]",
        ],
    ));
    assert_eq!(tuned.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&tuned.stderr).contains("starting from the weights of"));
    // Same seed, same data: a run that ignored the weights would log the reference's first
    // loss to the bit. Trained weights start far lower.
    let first_loss = |records: Vec<MetricsRecord>| {
        records
            .into_iter()
            .find(|r| r.kind == RecordKind::Train)
            .and_then(|r| r.loss)
            .unwrap()
    };
    let (fresh, from_model) = (
        first_loss(metrics(reference_dir.path())),
        first_loss(metrics(&out)),
    );
    assert!(
        from_model < 0.9 * fresh,
        "fresh {fresh}, fine-tuned {from_model}"
    );
    // Lineage: the fine-tune's manifest names the parent's version.
    let parent_version =
        ModelManifest::version_of(&std::fs::read(model.join("manifest.json")).unwrap());
    let tuned_manifest = model_manifest(&out);
    let parent = tuned_manifest.provenance.parent.expect("a parent");
    assert_eq!(parent.sha256, parent_version);
    assert_eq!(tuned_manifest.reading, None);
    assert_eq!(progress(&out).best.unwrap().reading_width, None);
    assert!(
        !tuned_manifest
            .metrics
            .keys()
            .any(|k| k.starts_with("cer@x")),
        "{:?}",
        tuned_manifest.metrics
    );

    // A parent trained on stretched lines: a config that leaves `preprocess` out trains and
    // records the parent's, one that sets another is refused before training.
    let wide = dir.path().join("wide-parent");
    std::fs::create_dir(&wide).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), wide.join(entry.file_name())).unwrap();
        }
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wide.join("manifest.json")).unwrap()).unwrap();
    manifest["preprocessing"]["stretch"] = serde_json::json!(1.5);
    std::fs::write(wide.join("manifest.json"), manifest.to_string()).unwrap();
    let from_wide = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "--set".to_string(),
            format!("model.init_from={}", wide.display()),
            "--set".into(),
            "max_steps=2".into(),
            "--set".into(),
            "reading_widths=[1]".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (
            dir.path().join(name),
            run(train_cmd(&dir.path().join(name), &args)),
        )
    };
    let (adopting, out_adopting) = from_wide("adopting", &[]);
    assert_eq!(out_adopting.status.code(), Some(0));
    let adopted = model_manifest(&adopting);
    assert_eq!(adopted.preprocessing.stretch, 1.5);
    let (_, refused) = from_wide("refused", &["--set", "preprocess.stretch=2"]);
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("preprocess") && stderr.contains("\"stretch\":1.5"),
        "{stderr}"
    );

    // The expected version is checked before anything trains.
    let wrong = run(train_cmd(
        &dir.path().join("wrong"),
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            &format!("model.init_sha256=\"{}\"", "0".repeat(64)),
        ],
    ));
    assert_eq!(wrong.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("initFrom.sha256"), "{stderr}");

    // A config that sets a size of its own contradicts the parent: the field is named.
    let clash = run(train_cmd(
        &dir.path().join("clash"),
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            "model.d_model=64",
        ],
    ));
    assert_eq!(clash.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert!(stderr.contains("model.d_model"), "{stderr}");

    // The built-in model is the `small` network: a `tiny` config cannot start from it.
    let other = run(train_cmd(
        &dir.path().join("other"),
        &["--set", "model.init_from=builtin:small"],
    ));
    assert_eq!(other.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("model.init_from") && stderr.contains("another architecture"),
        "{stderr}"
    );
}
