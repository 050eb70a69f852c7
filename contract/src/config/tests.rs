use super::*;

#[test]
fn a_fine_tune_takes_the_parents_architecture_and_names_a_contradicting_field() {
    let parent = Preset::Tiny.architecture();
    let plain = ModelSpec::default();
    assert_eq!(plain.adopt(&parent).unwrap(), parent);
    let mut dropout = ModelSpec {
        dropout: Some(0.2),
        ..ModelSpec::default()
    };
    assert_eq!(dropout.adopt(&parent).unwrap().dropout, 0.2);
    dropout.d_model = Some(64);
    let e = dropout.adopt(&parent).unwrap_err().to_string();
    assert!(e.starts_with("model.d_model:"), "{e}");
    let base = ModelSpec {
        preset: PresetOrDefault(Preset::Base),
        ..ModelSpec::default()
    };
    let e = base.adopt(&parent).unwrap_err().to_string();
    assert!(e.starts_with("model.preset:"), "{e}");
    let tiny = ModelSpec {
        preset: PresetOrDefault(Preset::Tiny),
        ..ModelSpec::default()
    };
    assert_eq!(tiny.adopt(&parent).unwrap(), parent);
}

#[test]
fn empty_config_is_the_default() {
    assert_eq!(TrainConfig::parse("", &[]).unwrap(), TrainConfig::default());
    assert_eq!(
        TrainConfig::parse("{}", &[]).unwrap(),
        TrainConfig::default()
    );
}

#[test]
fn overrides_set_nested_fields_with_typed_values() {
    let c = TrainConfig::parse(
        "model: {preset: tiny}\n",
        &[
            "optimizer.lr=0.0005".into(),
            "model.encoder_channels=[4, 8, 16]".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.optimizer.lr, 0.0005);
    assert_eq!(c.model.preset.0, Preset::Tiny);
    assert_eq!(c.model.resolve().unwrap().encoder_channels, vec![4, 8, 16]);
}

#[test]
fn unknown_field_error_names_the_path_and_allowed_fields() {
    let err = TrainConfig::parse("optimizer: {learning_rate: 1}\n", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("optimizer"), "{msg}");
    assert!(msg.contains("learning_rate"), "{msg}");
    assert!(msg.contains("`lr`"), "{msg}");
}

#[test]
fn bad_enum_value_lists_allowed_values() {
    let err = TrainConfig::parse("device: tpu\n", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("device") && msg.contains("cuda"), "{msg}");
    assert!(err.downcast_ref::<ConfigError>().is_some());
}

#[test]
fn ill_typed_override_is_a_config_error() {
    let err = TrainConfig::parse("", &["batch_size=lots".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("batch_size"));
    for bad in [
        "batch_size=0",
        "batch_size=1000000000000",
        "data.loader_threads=65",
        "data.prefetch_batches=100000",
    ] {
        let err = format!("{:#}", TrainConfig::parse("", &[bad.into()]).unwrap_err());
        let field = bad.split('=').next().unwrap();
        assert!(
            err.contains(field) && err.contains("must be in"),
            "{bad}: {err}"
        );
    }
    assert!(TrainConfig::parse("", &["nonsense".into()]).is_err());
}

#[test]
fn reading_widths_are_checked_and_name_the_problem() {
    assert_eq!(
        TrainConfig::default().reading_widths,
        DEFAULT_READING_WIDTHS.to_vec()
    );
    let c = TrainConfig::parse("reading_widths: [1]\n", &[]).unwrap();
    assert_eq!(c.reading_widths, vec![1.0]);
    for (yaml, why) in [
        ("reading_widths: []", "at least one factor"),
        ("reading_widths: [1, 5]", "factor 5 is outside 0.25..=4"),
        ("reading_widths: [0.1]", "factor 0.1 is outside"),
        ("reading_widths: [1, 1.1, 1]", "factor 1 is given twice"),
        ("preprocess: {stretch: 5}", "must be in 0.25..=4"),
    ] {
        let err = TrainConfig::parse(yaml, &[]).unwrap_err();
        let msg = format!("{err:#}");
        let field = yaml.split(':').next().unwrap();
        assert!(msg.contains(field) && msg.contains(why), "{yaml}: {msg}");
        assert!(err.downcast_ref::<ConfigError>().is_some(), "{yaml}");
    }
}

#[test]
fn language_model_weights_to_try_are_checked_and_paired_configured_first() {
    let lm = |yaml: &str| TrainConfig::parse(yaml, &[]).map(|c| c.language_model);
    // Nothing to try: the configured pair alone.
    assert_eq!(lm("").unwrap().weight_pairs(), vec![(0.5, 2.0)]);
    // An empty list stands for the configured weight; the configured pair comes first and
    // only once.
    let pairs = lm("language_model: {alphas: [0.35, 0.5], betas: [1, 2]}")
        .unwrap()
        .weight_pairs();
    assert_eq!(
        pairs,
        vec![(0.5, 2.0), (0.35, 1.0), (0.35, 2.0), (0.5, 1.0)]
    );
    let pairs = lm("language_model: {beta: 1, alphas: [0.65]}")
        .unwrap()
        .weight_pairs();
    assert_eq!(pairs, vec![(0.5, 1.0), (0.65, 1.0)]);
    // Unsure lines: nothing to try by default, else every threshold with every weight.
    assert!(lm("").unwrap().unsure_candidates().is_empty());
    let unsure = lm("language_model: {unsure_below: [0.3, 0.4], unsure_alphas: [0.8, 1.2]}")
        .unwrap()
        .unsure_candidates();
    assert_eq!(unsure, vec![(0.3, 0.8), (0.3, 1.2), (0.4, 0.8), (0.4, 1.2)]);
    for (yaml, field, why) in [
        (
            "language_model: {alphas: [-0.1]}",
            "language_model.alphas",
            "finite and not negative",
        ),
        (
            "language_model: {alphas: [0.5, 0.5]}",
            "language_model.alphas",
            "0.5 is given twice",
        ),
        (
            "language_model: {betas: [1, 2, 1]}",
            "language_model.betas",
            "1 is given twice",
        ),
        (
            "language_model: {alphas: [0,1,2,3,4,5,6,7,8], betas: [0,1,2,3,4,5,6,7]}",
            "language_model",
            "make 72 weight pairs, more than 64",
        ),
        (
            "language_model: {unsure_below: [0, 0.4], unsure_alphas: [1]}",
            "language_model.unsure_below",
            "confidence 0 must be above 0",
        ),
        (
            "language_model: {unsure_below: [1.5], unsure_alphas: [1]}",
            "language_model.unsure_below",
            "confidence 1.5 is above 1",
        ),
        (
            "language_model: {unsure_below: [0.4], unsure_alphas: [1, -1]}",
            "language_model.unsure_alphas",
            "weight -1 must be finite and not negative",
        ),
        (
            "language_model: {unsure_below: [0.4]}",
            "language_model",
            "unsure_below and unsure_alphas go together",
        ),
        (
            "language_model: {unsure_alphas: [1.0]}",
            "language_model",
            "unsure_below and unsure_alphas go together",
        ),
    ] {
        let msg = format!("{:#}", lm(yaml).unwrap_err());
        assert!(msg.contains(field) && msg.contains(why), "{yaml}: {msg}");
    }
}

#[test]
fn a_fine_tune_takes_its_parents_preprocessing_unless_it_sets_another() {
    let wide = PreprocessConfig {
        stretch: 1.25,
        ..PreprocessConfig::default()
    };
    let plain = PreprocessConfig::default();
    // Left at the defaults: the parent's, whatever it is.
    assert_eq!(plain.adopt(&wide).unwrap(), wide);
    assert_eq!(plain.adopt(&plain).unwrap(), plain);
    // Set to the parent's: kept.
    assert_eq!(wide.adopt(&wide).unwrap(), wide);
    // Set to something else: refused, naming both.
    let taller = PreprocessConfig {
        height: 48,
        ..PreprocessConfig::default()
    };
    let err = taller.adopt(&wide).unwrap_err().to_string();
    assert!(
        err.contains("preprocess")
            && err.contains("\"height\":48")
            && err.contains("\"stretch\":1.25"),
        "{err}"
    );
    assert!(err.contains("leave `preprocess` out"), "{err}");
}

#[test]
fn inconsistent_architecture_names_the_field() {
    let err = TrainConfig::parse("model: {d_model: 30, heads: 4}\n", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("model.heads"));
}

#[test]
fn flatten_round_trips_through_overrides() {
    let hp = serde_json::json!({"optimizer": {"lr": 0.002}, "batch_size": 8,
                                    "model": {"encoder_channels": [8, 16, 32]}});
    let sets = flatten_overrides(&hp);
    let c = TrainConfig::parse("", &sets).unwrap();
    assert_eq!(c.optimizer.lr, 0.002);
    assert_eq!(c.batch_size, 8);
    assert_eq!(c.model.encoder_channels, Some(vec![8, 16, 32]));
}

#[test]
fn partial_sections_keep_their_parent_defaults() {
    let c = TrainConfig::parse("data: {validation: {samples: 64}}\n", &[]).unwrap();
    let d = TrainConfig::default();
    assert_eq!(c.data.validation.samples, Some(64));
    assert_eq!(c.data.validation.synthetic, d.data.validation.synthetic);
    assert_eq!(c.data.train, d.data.train);
}

#[test]
fn held_out_text_is_never_trained_on_and_training_text_never_validates() {
    let err =
        TrainConfig::parse("data: {train: {synthetic: {split: descriptions}}}\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("data.train.synthetic.split"),
        "{err:#}"
    );
    let err = TrainConfig::parse(
        "data: {extra_validation: {mine: {samples: 4, synthetic: {split: train}}}}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("data.extra_validation.mine.synthetic.split"),
        "{err:#}"
    );
    let err = TrainConfig::parse(
        "data: {extra_validation: {mine: {synthetic: {split: validation}}}}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("data.extra_validation.mine.samples"),
        "{err:#}"
    );
}

#[test]
fn default_validation_reads_realistic_lines_in_seen_and_unseen_fonts() {
    let c = TrainConfig::default();
    let v = &c.data.validation.synthetic;
    assert_eq!(v.split, TextSplit::Descriptions);
    assert_eq!((v.max_chars, v.mean_chars), (100, Some(PRINTED_MEAN_CHARS)));
    assert!(
        v.fonts.is_empty(),
        "the objective's set uses the training fonts"
    );
    let unseen = c.data.extra_validation[UNSEEN_FONTS_SET].as_ref().unwrap();
    assert_eq!(unseen.synthetic.fonts, UNSEEN_VALIDATION_FONTS);
    assert_eq!(unseen.synthetic.split, TextSplit::Descriptions);
    // A partial override keeps the rest of the set; `null` removes it.
    let c =
        TrainConfig::parse("", &["data.extra_validation.unseen-fonts.samples=8".into()]).unwrap();
    let unseen = c.data.extra_validation[UNSEEN_FONTS_SET].as_ref().unwrap();
    assert_eq!(unseen.samples, Some(8));
    assert_eq!(unseen.synthetic.fonts, UNSEEN_VALIDATION_FONTS);
    let c = TrainConfig::parse("", &["data.extra_validation.unseen-fonts=null".into()]).unwrap();
    assert_eq!(c.data.extra_validation.get(UNSEEN_FONTS_SET), Some(&None));
}

#[test]
fn train_data_is_one_set_or_a_weighted_list() {
    let c = TrainConfig::parse(
            "data:\n  train:\n    - {kind: synthetic, weight: 0.7}\n    - {kind: tesstrain, path: s3://b/flags/, weight: 0.3, augment: true}\n",
            &[],
        )
        .unwrap();
    let sources = c.data.train.sources();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[1].kind, DatasetKind::Tesstrain);
    assert_eq!(sources[1].augment, Some(true));
    let w = c.data.train.normalized_weights();
    assert!(
        (w[0] - 0.7).abs() < 1e-12 && (w[1] - 0.3).abs() < 1e-12,
        "{w:?}"
    );
    // The config round-trips through its JSON (checkpoints record it).
    assert_eq!(
        TrainConfig::parse(&c.to_json().to_string(), &[]).unwrap(),
        c
    );
    // The single-object form still parses, into the same type, and keeps its defaults.
    let c = TrainConfig::parse("data: {train: {samples: 5}}\n", &[]).unwrap();
    assert!(!c.data.train.is_mix());
    assert_eq!(c.data.train.sources()[0].samples, Some(5));
    assert_eq!(c.data.train.field(0), "data.train");
    // A list can come in as an override too (the operator passes it that way).
    let c = TrainConfig::parse(
        "",
        &["data.train=[{kind: synthetic}, {kind: synthetic, weight: 3}]".into()],
    )
    .unwrap();
    assert_eq!(c.data.train.normalized_weights(), vec![0.25, 0.75]);
}

#[test]
fn an_average_of_the_weights_needs_a_decay_below_one() {
    for set in ["optimizer.ema_decay=1", "optimizer.ema_decay=-0.5"] {
        let err = TrainConfig::parse("", &[set.to_string()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("optimizer.ema_decay"),
            "{err:#}"
        );
    }
    let c = TrainConfig::parse("optimizer: {ema_decay: 0.999}\n", &[]).unwrap();
    assert_eq!(c.optimizer.ema_decay, 0.999);
    assert_eq!(c.to_json()["optimizer"]["ema_decay"], 0.999);
    let off = TrainConfig::default().to_json();
    assert!(
        off["optimizer"].get("ema_decay").is_none(),
        "off is not written"
    );
}

#[test]
fn mix_errors_name_the_source() {
    for (weight, shown) in [("0", "0"), ("-1", "-1")] {
        let yaml = format!(
            "data: {{train: [{{kind: synthetic}}, {{kind: synthetic, weight: {weight}}}]}}\n"
        );
        let err = TrainConfig::parse(&yaml, &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("data.train[1].weight") && msg.contains(shown),
            "{weight}: {msg}"
        );
        assert!(err.downcast_ref::<ConfigError>().is_some());
    }
    for (yaml, set, field) in [
        (
            "data: {train: [{kind: synthetic}, {kind: synthetic, weight: .nan}]}\n",
            None,
            "data.train[1].weight",
        ),
        (
            "",
            Some("data.train=[{kind: synthetic, weight: .inf}]"),
            "data.train[0].weight",
        ),
        ("optimizer: {lr: -.inf}\n", None, "optimizer.lr"),
    ] {
        let sets: Vec<String> = set.map(String::from).into_iter().collect();
        let err = TrainConfig::parse(yaml, &sets).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(field) && msg.contains("finite"), "{msg}");
    }
    // A config built in code is checked too.
    let mut c = TrainConfig::default();
    c.data.train = TrainData::Mix(vec![DatasetSpec::default(); 2]);
    c.data.train.sources_mut()[1].weight = Some(f64::INFINITY);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("data.train[1].weight"), "{err}");
    let err =
        TrainConfig::parse("data: {train: [{kind: synthetic, wieght: 1}]}\n", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("data.train[0]") && msg.contains("wieght"),
        "{msg}"
    );
    let err = TrainConfig::parse("data: {train: [{kind: tesstrain}]}\n", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("data.train[0].path"), "{err:#}");
    let err = TrainConfig::parse("data: {train: []}\n", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("at least one"), "{err:#}");
    let err = TrainConfig::parse("data: {validation: {weight: 2}}\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("data.validation.weight"),
        "{err:#}"
    );
    let err =
        TrainConfig::parse("data: {train: {synthetic: {glyph_morph: 1.5}}}\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("data.train.synthetic.glyph_morph"),
        "{err:#}"
    );
    let ok = TrainConfig::parse("data: {train: {synthetic: {glyph_morph: 0.6}}}\n", &[]);
    assert!(ok.is_ok(), "{ok:?}");
    let err =
        TrainConfig::parse("data: {train: {synthetic: {ink_texture: -0.1}}}\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("data.train.synthetic.ink_texture"),
        "{err:#}"
    );
    let ok = TrainConfig::parse("data: {train: {synthetic: {ink_texture: 0.3}}}\n", &[]);
    assert!(ok.is_ok(), "{ok:?}");
    let err = TrainConfig::parse("data: {validation: {augment: true}}\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("data.validation.augment"),
        "{err:#}"
    );
}

#[test]
fn every_preset_is_valid() {
    for p in [Preset::Tiny, Preset::Small, Preset::Base] {
        p.architecture().validate().unwrap();
    }
}

#[test]
fn loader_threads_left_at_zero_follow_the_device() {
    let data = TrainConfig::default().data;
    assert_eq!(data.loader_threads, 0);
    assert_eq!(data.loader_threads_for(false, 16), 1, "the CPU: one");
    assert_eq!(
        data.loader_threads_for(true, 16),
        15,
        "CUDA: all CPUs but one"
    );
    assert_eq!(data.loader_threads_for(true, 1), 1);
    assert_eq!(data.loader_threads_for(true, 1000), MAX_LOADER_THREADS);
    let set = TrainConfig::parse("", &["data.loader_threads=3".into()])
        .unwrap()
        .data;
    assert_eq!(set.loader_threads_for(true, 16), 3, "a set number is kept");
    assert_eq!(set.loader_threads_for(false, 16), 3);
}
