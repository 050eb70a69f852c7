//! `textrec-worker eval` and `recognize` through the built binary, on a tesstrain folder
//! rendered by the synthetic data module and a model from a short `tiny` training run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{DatasetKind, DatasetSpec, SyntheticConfig, TextSplit};
use textrec_model::data::open_dataset;

const LINES: u64 = 6;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_textrec-worker"));
    c.env("RUST_LOG", "info").env_remove("TEXTREC_LOG_JSON");
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn textrec-worker");
    eprintln!("--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The pretrained model's check set `set` (`training-fonts`, `unseen-fonts`).
fn check_set(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/small/check/{set}"))
}

/// Images `lines` of the pretrained model's check set `set`.
fn check_lines(set: &str, lines: std::ops::Range<usize>) -> Vec<PathBuf> {
    let dir = check_set(set);
    lines
        .map(|i| dir.join(format!("line-{i:04}.png")))
        .collect()
}

/// The built-in model's manifest.
fn builtin_manifest() -> serde_json::Value {
    let path = check_set("..").join("manifest.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `recognize --threads 1 --confidence EXTRA IMAGES` with the built-in model: each line's
/// (text, confidence).
fn read_with_confidence(images: &[PathBuf], extra: &[&str]) -> Vec<(String, f32)> {
    let mut c = bin();
    c.args(["recognize", "--threads", "1", "--confidence"])
        .args(extra)
        .args(images);
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (rest, conf) = l.rsplit_once('\t').unwrap();
            let text = rest.split_once('\t').unwrap().1;
            (text.to_string(), conf.parse::<f32>().unwrap())
        })
        .collect()
}

/// A tesstrain folder of `LINES` rendered lines plus one unreadable image, and a trained model.
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("lines");
        std::fs::create_dir_all(&data).unwrap();
        let spec = DatasetSpec {
            kind: DatasetKind::Synthetic,
            samples: Some(LINES),
            synthetic: SyntheticConfig {
                split: TextSplit::Validation,
                max_chars: 16,
                ..SyntheticConfig::default()
            },
            ..DatasetSpec::default()
        };
        let set = open_dataset(&spec, 1, IAM_CHARSET).unwrap();
        for i in 0..LINES {
            let s = set.get(i).unwrap();
            s.image.save(data.join(format!("line-{i}.png"))).unwrap();
            std::fs::write(
                data.join(format!("line-{i}.gt.txt")),
                format!("{}\n", s.text),
            )
            .unwrap();
        }
        std::fs::write(data.join("broken.png"), b"not a png at all").unwrap();
        std::fs::write(data.join("broken.gt.txt"), "broken\n").unwrap();

        let out = dir.path().join("trial");
        let mut train = bin();
        train
            .arg("train")
            .arg("--config")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trial-tiny.yaml"))
            .arg("--output")
            .arg(&out)
            .args([
                "--set",
                "max_steps=10",
                "--set",
                "eval_interval=10",
                "--set",
                "data.validation.samples=8",
                // The trial writes a language model and measures `ctc-lm` decoding too.
                "--set",
                "language_model.order=3",
            ]);
        assert_eq!(
            run(train).status.code(),
            Some(0),
            "training the fixture model failed"
        );
        Fixture {
            data,
            model: out.join("model"),
            _dir: dir,
        }
    })
}

#[test]
fn eval_json_reports_cer_wer_lines_and_skipped() {
    let f = fixture();
    let preds = tempfile::tempdir().unwrap();
    let mut c = bin();
    c.arg("eval")
        .arg("--model")
        .arg(&f.model)
        .arg("--data")
        .arg(&f.data);
    c.arg("--predictions")
        .arg(preds.path())
        .arg("--json")
        .args(["--device", "cpu"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a JSON line");
    let j: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{last}: {e}"));
    assert_eq!(j["lines"], LINES);
    assert_eq!(
        j["skipped"], 1,
        "the unreadable image is skipped and counted: {j}"
    );
    let (cer, wer) = (j["cer"].as_f64().unwrap(), j["wer"].as_f64().unwrap());
    assert!(cer >= 0.0 && wer >= 0.0, "{j}");
    for i in 0..LINES {
        let p = preds.path().join(format!("line-{i}.txt"));
        assert!(p.exists(), "missing prediction {}", p.display());
    }
    // What the operator caches promotion evaluations by: the model's version and the data's.
    let manifest = std::fs::read(f.model.join("manifest.json")).unwrap();
    assert_eq!(
        j["model_sha256"],
        textrec_contract::manifest::sha256_hex(&manifest)
    );
    let digest = j["dataset_digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{j}");
    // How the line confidence separates wrong readings, at each review threshold.
    let conf = &j["confidence"];
    assert_eq!(conf["lines"], LINES, "{j}");
    let thresholds = conf["thresholds"].as_array().unwrap();
    assert_eq!(thresholds.len(), 5, "{j}");
    let flagged: Vec<f64> = thresholds
        .iter()
        .map(|t| t["flagged"].as_f64().unwrap())
        .collect();
    assert!(flagged.windows(2).all(|w| w[0] <= w[1]), "{flagged:?}");

    // --samples caps the lines; --result-file gets the same result (without the table).
    let result = preds.path().join("result.json");
    let mut c = bin();
    c.arg("eval")
        .arg("--model")
        .arg(&f.model)
        .arg("--data")
        .arg(&f.data)
        .args(["--samples", "2", "--device", "cpu", "--result-file"])
        .arg(&result);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert!(r["lines"].as_u64().unwrap() <= 2, "{r}");
    assert_eq!(r["dataset_digest"], digest.as_str());
    assert!(r.get("by_length").is_none(), "{r}");
    assert!(r.get("confidence").is_none(), "{r}");
}

#[test]
fn eval_reads_a_file_url_like_its_path_and_refuses_an_empty_location() {
    let f = fixture();
    let json_of = |data: &str| {
        let mut c = bin();
        c.args(["eval", "--json", "--device", "cpu", "--model"])
            .arg(&f.model)
            .args(["--data", data]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(0), "{data}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.lines().last().unwrap().to_string()
    };
    let url = url::Url::from_directory_path(&f.data).unwrap().to_string();
    assert_eq!(json_of(&url), json_of(f.data.to_str().unwrap()));

    let empty = tempfile::tempdir().unwrap();
    let mut c = bin();
    c.args(["eval", "--device", "cpu", "--model"])
        .arg(&f.model)
        .arg("--data")
        .arg(
            url::Url::from_directory_path(empty.path())
                .unwrap()
                .as_str(),
        );
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(78),
        "an empty set is a config error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data"));
}

fn eval_cer(args: &[&str], model: &Path, data: &Path) -> Output {
    let mut c = bin();
    c.args(["eval", "--json", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(args);
    run(c)
}

/// `eval --threads 1 --samples N --json --data SET` with the built-in model.
fn eval_first_lines(set: &Path, samples: u32) -> Command {
    let mut c = bin();
    c.args(["eval", "--threads", "1", "--samples", &samples.to_string()])
        .args(["--json", "--data"])
        .arg(set);
    c
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap()
}

#[test]
fn a_trial_writes_its_language_model_and_eval_reads_with_it() {
    let f = fixture();
    let manifest: textrec_contract::ModelManifest =
        serde_json::from_slice(&std::fs::read(f.model.join("manifest.json")).unwrap()).unwrap();
    let lm = manifest
        .language_model
        .as_ref()
        .expect("language_model.order=3 writes one");
    assert_eq!(lm.order, 3);
    assert!(lm.ngrams > 1000, "{lm:?}");
    assert!(manifest.files.iter().any(|d| d.path == lm.file));
    assert!(f.model.join(&lm.file).exists());
    // The decoding was chosen among all four modes.
    assert!(
        manifest.metrics.contains_key("cer@ctc-lm"),
        "{:?}",
        manifest.metrics
    );

    let out = eval_cer(&["--decode", "ctc-lm"], &f.model, &f.data);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(last_json(&out)["lines"], LINES);
    // The search's weights can be overridden for tuning, within reason.
    let out = eval_cer(
        &[
            "--decode",
            "ctc-lm",
            "--lm-alpha",
            "0",
            "--lm-beta",
            "0",
            "--beam",
            "1",
        ],
        &f.model,
        &f.data,
    );
    assert_eq!(out.status.code(), Some(0));
    let out = eval_cer(&["--beam", "0"], &f.model, &f.data);
    assert_eq!(out.status.code(), Some(2), "clap refuses a beam of 0");
}

#[test]
fn lm_adds_a_language_model_to_a_model_folder() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // A model without one: the fixture's, with its language model taken out.
    let folder = tmp.path().join("model");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        f.model.join("model.safetensors"),
        folder.join("model.safetensors"),
    )
    .unwrap();
    let mut manifest: textrec_contract::ModelManifest =
        serde_json::from_slice(&std::fs::read(f.model.join("manifest.json")).unwrap()).unwrap();
    let file = manifest.language_model.take().unwrap().file;
    manifest.files.retain(|d| d.path != file);
    manifest.decoding = textrec_contract::DecodeMode::Ctc;
    std::fs::write(
        folder.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();

    let out = eval_cer(&["--decode", "ctc-lm"], &folder, &f.data);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a language model"));
    let out = eval_cer(&["--lm-alpha", "0.3"], &folder, &f.data);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has none"));

    // A small corpus of its own: two fortunes and a word list.
    let fortunes = tmp.path().join("fortunes");
    std::fs::create_dir_all(&fortunes).unwrap();
    std::fs::write(
        fortunes.join("sayings"),
        "A stitch in time saves nine.\n%\nWell begun is half done, they say.\n%\n",
    )
    .unwrap();
    let words = tmp.path().join("words");
    std::fs::write(&words, "time\nnine\nhalf\ndone\n").unwrap();
    let mut c = bin();
    c.args([
        "lm",
        "--order",
        "4",
        "--min-count",
        "1",
        "--make-default",
        "--model",
    ])
    .arg(&folder)
    .arg("--fortunes-dir")
    .arg(&fortunes)
    .arg("--words-file")
    .arg(&words);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("order-4 language model"));
    let after: textrec_contract::ModelManifest =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(after.decoding, textrec_contract::DecodeMode::CtcLm);
    assert_eq!(after.language_model.as_ref().unwrap().order, 4);
    let out = eval_cer(&[], &folder, &f.data);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the folder reads with `ctc-lm` now"
    );

    // Not a model folder: a configuration error naming it.
    let mut c = bin();
    c.args(["lm", "--model"]).arg(tmp.path().join("nothing"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a model folder"));
}

#[test]
fn eval_of_a_missing_model_fails_naming_it() {
    let f = fixture();
    let mut c = bin();
    c.args(["eval", "--model", "/nonexistent/model", "--data"])
        .arg(&f.data);
    let out = run(c);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn a_model_on_unreachable_storage_is_a_storage_error_not_a_missing_model() {
    // A port nothing listens on: every request is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = fixture();
    let mut c = bin();
    c.args(["recognize", "--model", "s3://models/ocr"])
        .arg(f.data.join("line-0.png"))
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    let out = run(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 1 (may pass on retry), not 78: the location is not wrong, the store is down.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read s3://models/ocr/manifest.json"),
        "{stderr}"
    );
    assert!(stderr.contains("after 10 retries"), "{stderr}");
    assert!(!stderr.contains("not a model folder"), "{stderr}");
}

#[test]
fn recognize_prints_path_tab_text_per_image() {
    let f = fixture();
    let images: Vec<PathBuf> = (0..3)
        .map(|i| f.data.join(format!("line-{i}.png")))
        .collect();
    let mut c = bin();
    c.arg("recognize")
        .arg("--model")
        .arg(&f.model)
        .arg("--confidence")
        .args(&images);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, img) in lines.iter().zip(&images) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{line}");
        assert_eq!(cols[0], img.display().to_string());
        let conf: f32 = cols[2].parse().unwrap();
        assert!((0.0..=1.0).contains(&conf));
    }

    let mut both = bin();
    both.arg("recognize")
        .arg("--model")
        .arg(&f.model)
        .args(["--endpoint", "grpc://127.0.0.1:1"]);
    both.arg(&images[0]);
    assert_eq!(
        run(both).status.code(),
        Some(2),
        "--model and --endpoint are exclusive"
    );
}

#[test]
fn recognize_without_a_model_reads_with_the_built_in_one() {
    // The pretrained model's own check lines: it reads most of their characters right.
    let images = check_lines("training-fonts", 0..4);
    let mut c = bin();
    c.args(["recognize", "--threads", "1"]).args(&images);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), images.len(), "{stdout}");
    let mut card = textrec_model::metrics::ScoreCard::default();
    for (line, img) in lines.iter().zip(&images) {
        let (path, text) = line.split_once('\t').unwrap();
        assert_eq!(path, img.display().to_string());
        let truth = std::fs::read_to_string(img.with_extension("gt.txt")).unwrap();
        card.add(truth.trim(), text);
    }
    let cer = card.score().cer;
    assert!(
        cer < 0.5,
        "CER {cer} on the model's own check lines: {stdout}"
    );
}

#[test]
fn recognize_reads_with_the_decoding_and_search_weights_asked_for() {
    let images = check_lines("training-fonts", 0..4);
    let read = |extra: &[&str]| {
        read_with_confidence(&images, extra)
            .into_iter()
            .map(|(text, _)| text)
            .collect::<Vec<_>>()
    };
    let chars = |texts: &[String]| texts.iter().map(|t| t.chars().count()).sum::<usize>();
    let default = read(&[]);
    assert_eq!(default.len(), images.len());
    // A per-character penalty this large makes the `ctc-lm` search give up most characters:
    // the weights reach the search.
    let starved = read(&["--decode", "ctc-lm", "--lm-beta", "-50"]);
    assert!(
        chars(&starved) < chars(&default) / 2,
        "{starved:?} vs {default:?}"
    );
    assert_eq!(read(&["--decode", "ctc"]).len(), images.len());
    // A server reads as it was started: asking it to read otherwise is a usage error.
    for extra in [
        &["--decode", "ctc"][..],
        &["--beam", "4"][..],
        &["--lm-unsure-below", "0.3"][..],
        &["--widths", "1,1.2"][..],
    ] {
        let mut c = bin();
        c.args(["recognize", "--endpoint", "grpc://127.0.0.1:1"])
            .args(extra)
            .arg(&images[0]);
        let out = run(c);
        // clap refuses --decode (2); --beam and --widths are refused as config errors (78).
        assert!(
            matches!(out.status.code(), Some(2 | 78)),
            "{extra:?}: {:?}",
            out.status
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("--endpoint"));
    }
}

#[test]
fn lines_read_with_little_confidence_are_searched_again_with_the_stronger_language_model() {
    // Lines 11 and 15 read otherwise when searched again as the built-in model's manifest says.
    let images = check_lines("unseen-fonts", 8..16);
    // (text, confidence) of each line, read with `ctc-lm` and the manifest's weights.
    let read = |extra: &[&str]| {
        let ctc_lm = ["--decode", "ctc-lm"];
        read_with_confidence(&images, &[&ctc_lm[..], extra].concat())
    };
    // Every line searched once (whatever the manifest says of unsure lines).
    let once = read(&["--lm-unsure-below", "0"]);
    let strong = read(&["--lm-unsure-below", "0", "--lm-alpha", "3"]);
    assert!(
        once.iter().zip(&strong).any(|(a, b)| a.0 != b.0),
        "a language model weighed 3 reads no line otherwise: {once:?}"
    );
    // Searched again under the median confidence: those lines read as with the stronger
    // weight throughout, the others as before. `--confidence` prints three decimals, so the
    // threshold goes in the middle of a gap of more than 0.001 between two lines' printed
    // confidences (the one nearest the median): no line's true confidence can then fall on
    // the other side of it than its printed one.
    let mut confidences: Vec<f32> = once.iter().map(|r| r.1).collect();
    confidences.sort_by(f32::total_cmp);
    let mid = confidences.len() / 2;
    let gap = (1..confidences.len())
        .filter(|&k| confidences[k] - confidences[k - 1] > 0.001)
        .min_by_key(|&k| k.abs_diff(mid))
        .expect("two lines read with confidences more than 0.001 apart");
    let below = (confidences[gap - 1] + confidences[gap]) / 2.0;
    let gated = read(&[
        "--lm-unsure-below",
        &below.to_string(),
        "--lm-unsure-alpha",
        "3",
    ]);
    for (i, ((first, conf), (again, strong))) in
        once.iter().zip(gated.iter().zip(&strong)).enumerate()
    {
        let expected = if *conf < below { &strong.0 } else { first };
        assert_eq!(
            &again.0, expected,
            "line {i} (confidence {conf}, threshold {below})"
        );
    }
    assert!(once.iter().any(|r| r.1 < below) && once.iter().any(|r| r.1 >= below));
    // The built-in model searches its unsure lines again as its manifest says, unasked.
    let manifest = builtin_manifest();
    let unsure = &manifest["language_model"]["unsure_lines"];
    let (below, alpha) = (unsure["below"].as_f64(), unsure["alpha"].as_f64());
    let (below, alpha) = (
        below.expect("unsure_lines.below"),
        alpha.expect("unsure_lines.alpha"),
    );
    let by_default = read(&[]);
    assert_eq!(
        by_default,
        read(&[
            "--lm-unsure-below",
            &below.to_string(),
            "--lm-unsure-alpha",
            &alpha.to_string()
        ])
    );
    assert_ne!(
        by_default, once,
        "the manifest's unsure lines were not searched again"
    );
    // A threshold is a confidence.
    let mut c = bin();
    c.args(["recognize", "--lm-unsure-below", "1.5"])
        .arg(&images[0]);
    assert_eq!(run(c).status.code(), Some(2), "a usage error");
}

#[test]
fn recognize_at_several_widths_keeps_the_most_confident_reading() {
    let check = check_set("unseen-fonts");
    let images = check_lines("unseen-fonts", 0..8);
    let read = |extra: &[&str]| {
        read_with_confidence(&images, extra)
            .into_iter()
            .map(|(_, confidence)| confidence)
            .collect::<Vec<_>>()
    };
    let once = read(&["--widths", "1"]);
    // The built-in model reads at its manifest's width unless told otherwise.
    let manifest = builtin_manifest();
    let own_width = manifest["reading"]["widths"][0]
        .as_f64()
        .expect("the pretrained model names its reading width");
    let default = read(&[]);
    assert_eq!(default, read(&["--widths", &own_width.to_string()]));
    assert_ne!(default, once, "the manifest's reading width was not used");
    let widths = read(&["--widths", "1,0.8,1.25,1.5"]);
    assert_eq!(widths.len(), images.len());
    for (i, (a, b)) in once.iter().zip(&widths).enumerate() {
        assert!(
            b >= a,
            "line {i}: {b} < {a}: the first width's reading is a candidate"
        );
    }
    assert!(
        once.iter().zip(&widths).any(|(a, b)| b > a),
        "no line read more confidently at another width: {once:?} {widths:?}"
    );
    // `eval` says how many lines were read again; without --widths it says nothing of it.
    let eval = |extra: &[&str]| {
        let mut c = eval_first_lines(&check, 8);
        c.args(extra);
        last_json(&run(c))
    };
    let j = eval(&["--widths", "1,1.25", "--reread-below", "0.9"]);
    let reread = j["reread_lines"].as_u64().expect("reread_lines");
    assert!((1..=8).contains(&reread), "{j}");
    assert!(eval(&[])["reread_lines"].is_null());
    // It names the widths it read at when they are not the line as drawn.
    assert_eq!(eval(&[])["widths"], serde_json::json!([own_width]));
    assert!(eval(&["--widths", "1"])["widths"].is_null());

    // With a threshold no line falls below, only the first width is read.
    assert_eq!(
        read(&["--widths", "1,0.8,1.25,1.5", "--reread-below", "0"]),
        once
    );

    for (extra, code, says) in [
        (
            &["--widths", "1,9"][..],
            78,
            "--widths: width factor 9 is outside",
        ),
        (&["--widths", "1,1"][..], 78, "given twice"),
        (
            &["--widths", "1,1.2", "--reread-below", "2"][..],
            78,
            "threshold 2",
        ),
        (&["--reread-below", "0.5"][..], 2, "--widths"),
    ] {
        let mut c = bin();
        c.args(["recognize"]).args(extra).arg(&images[0]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(code), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}

/// `synth --independent-evaluation` draws its text from a documentation folder, marks the set,
/// and that set is scored by `eval` but refused as training data (and not written over by an
/// ordinary `synth`).
#[test]
fn an_independent_evaluation_set_is_read_by_eval_and_refused_by_training() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc/pkg");
    std::fs::create_dir_all(&doc).unwrap();
    std::fs::write(
        doc.join("README"),
        "This package reads the files you give it and writes a summary of each one.\n\n\
         Run it with no arguments to see the options it understands and their defaults.\n",
    )
    .unwrap();
    let set = dir.path().join("set");
    let synth = |extra: &[&str]| {
        let mut c = bin();
        c.args(["synth", "--count", "3", "--font", "DejaVu Sans", "--out"])
            .arg(&set)
            .args(extra);
        run(c)
    };
    let doc_dir = dir.path().join("doc");
    let out = synth(&[
        "--independent-evaluation",
        "--doc-dir",
        doc_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(set.join("EVALUATION-ONLY").is_file());
    let texts: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(set.join(format!("line-000{i}.gt.txt"))).unwrap())
        .collect();
    let words = "This package reads the files you give it and writes a summary of each one. \
                 Run it with no arguments to see the options it understands and their defaults.";
    for t in &texts {
        let prose = t.trim().split(' ').filter(|w| words.contains(*w)).count();
        assert!(prose > 0 || t.chars().any(|c| c.is_ascii_digit()), "{t:?}");
    }

    // eval scores it (with the built-in model).
    let mut c = bin();
    c.args(["eval", "--threads", "1", "--json", "--data"])
        .arg(&set);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["lines"], 3, "{j}");

    // Training refuses it, before any step.
    let mut c = bin();
    c.arg("train")
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trial-tiny.yaml"))
        .arg("--output")
        .arg(dir.path().join("trial"))
        .arg("--set")
        .arg(format!(
            "data.train={{kind: tesstrain, path: {}}}",
            set.display()
        ));
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(textrec_contract::exit::CONFIG_ERROR)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("independent evaluation set"), "{stderr}");
    assert!(!dir.path().join("trial/model").exists());

    // An evaluation whose score chooses a model (a promotion) refuses it, by flag or by the
    // environment the operator sets.
    for by_env in [false, true] {
        let mut c = bin();
        c.args(["eval", "--threads", "1", "--json", "--data"])
            .arg(&set);
        if by_env {
            c.env("TEXTREC_EVAL_SELECTION", "1");
        } else {
            c.arg("--selection");
        }
        let out = run(c);
        assert_eq!(
            out.status.code(),
            Some(textrec_contract::exit::CONFIG_ERROR)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("independent evaluation set"));
    }

    // An ordinary set is not written into it.
    let out = synth(&[]);
    assert_eq!(
        out.status.code(),
        Some(textrec_contract::exit::CONFIG_ERROR)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("independent evaluation set"));
}

#[test]
fn eval_reads_with_the_encoder_in_the_precision_asked_for() {
    let check = check_set("unseen-fonts");
    let eval = |extra: &[&str], env: Option<&str>| {
        let mut c = eval_first_lines(&check, 16);
        c.args(extra).env_remove("TEXTREC_PRECISION");
        if let Some(value) = env {
            c.env("TEXTREC_PRECISION", value);
        }
        let out = run(c);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(&out)
    };
    let exact = eval(&[], None);
    assert_eq!(exact["precision"], "fp32");
    let half = eval(&["--precision", "bf16"], None);
    assert_eq!(half["precision"], "bf16");
    // The same model, nearly the same readings: bf16 rounds the encoder's weights and maps.
    let (a, b) = (
        exact["cer"].as_f64().unwrap(),
        half["cer"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 0.02, "fp32 CER {a}, bf16 CER {b}");
    // `auto` is bf16 only where the CPU computes it; the variable stands in for the flag.
    let auto = eval(&[], Some("auto"));
    let native = textrec_model::precision::cpu_has_native_bf16();
    assert_eq!(auto["precision"], if native { "bf16" } else { "fp32" });

    let mut c = bin();
    c.args(["eval", "--precision", "fp16", "--data"])
        .arg(&check);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fp32") && stderr.contains("auto"),
        "{stderr}"
    );

    // A server reads as it was started: a precision for this process is a usage error.
    let mut c = bin();
    c.args([
        "recognize",
        "--endpoint",
        "grpc://127.0.0.1:1",
        "--precision",
        "bf16",
    ])
    .arg(check_lines("unseen-fonts", 0..1).remove(0));
    let out = run(c);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision"));
}
