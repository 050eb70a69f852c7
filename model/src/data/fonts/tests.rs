use super::*;
use textrec_contract::charset::IAM_CHARSET;

fn training_set() -> Arc<FontSet> {
    FontSet::load(&SyntheticConfig::default(), IAM_CHARSET).expect(
        "training fonts (apt-get install fonts-dkg-handwriting fonts-breip fonts-dancingscript \
         fonts-humor-sans fonts-comic-neue fonts-ecolier-court fonts-dejavu-core fonts-liberation2)",
    )
}

#[test]
fn a_font_folder_is_one_entry_of_all_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("opentype/pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let set = training_set();
    let dejavu: Vec<&LoadedFont> = set
        .fonts()
        .iter()
        .filter(|f| f.name.starts_with("DejaVuSans"))
        .take(2)
        .collect();
    for f in &dejavu {
        std::fs::copy(&f.path, pkg.join(f.path.file_name().unwrap())).unwrap();
    }
    let fonts_in = |wanted: &str| SyntheticConfig {
        fonts: vec![wanted.to_string()],
        font_dirs: vec![dir.path().display().to_string()],
        ..SyntheticConfig::default()
    };
    for wanted in ["opentype/pkg".to_string(), pkg.display().to_string()] {
        let loaded = FontSet::load_uncached(&fonts_in(&wanted), IAM_CHARSET).unwrap();
        assert_eq!(loaded.fonts().len(), 2, "{wanted}");
        assert_eq!(loaded.groups.len(), 1, "{wanted}");
    }
    std::fs::create_dir_all(dir.path().join("empty/")).unwrap();
    let err = FontSet::load_uncached(&fonts_in("empty/"), IAM_CHARSET).unwrap_err();
    assert!(err.to_string().contains("holds no .ttf"), "{err}");
}

#[test]
fn missing_evaluation_fonts_name_their_packages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("truetype/femkeklaver")).unwrap();
    let err = evaluation_font_folders(&[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apt-get install fonts-bwht fonts-kaushanscript"),
        "{err}"
    );
}

/// Evidence: `render_alphabet_sheets` (below) writes `a..z` over `A..Z` for every training
/// font; viewed by eye, Humor Sans draws each lowercase letter as a capital (the two rows
/// look alike, same height, no ascenders or descenders), while every other training font
/// (dkg*, Breip, breipfont, Dancing Script, Comic Neue, Ecolier court, DejaVu, Liberation)
/// has true lowercase letters. The detector agrees: Humor Sans has 23 lowercase letters
/// whose nearest capital is their own and an ascender ratio of 0.98; the others have at
/// most 17 and ratios from 1.32 (Liberation Mono) to 3.08 (Ecolier court).
#[test]
fn caps_only_fonts_are_detected_from_their_glyphs() {
    let set = training_set();
    assert_eq!(set.fonts().len(), TRAINING_FONTS.len());
    let caps: Vec<&str> = set
        .fonts()
        .iter()
        .filter(|f| f.caps_only)
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(caps, vec!["Humor-Sans"]);
}

#[test]
fn both_case_measures_separate_with_a_margin() {
    let set = training_set();
    for f in set.fonts() {
        let own = own_capital_matches(&f.font).len();
        let ratio = ascender_ratio(&f.font).unwrap();
        if f.caps_only {
            assert!(own >= 22 && ratio < 1.05, "{}: {own} {ratio}", f.name);
        } else {
            assert!(own <= 17 && ratio > 1.25, "{}: {own} {ratio}", f.name);
        }
    }
}

#[test]
fn every_training_font_covers_the_letters() {
    let set = training_set();
    for f in set.fonts() {
        let missing = f.missing("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
        assert!(missing.is_empty(), "{} lacks {missing:?}", f.name);
        assert!(f.package.is_some());
    }
}

#[test]
fn chosen_font_always_covers_the_label() {
    use rand::SeedableRng;
    let set = training_set();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..200 {
        let (font, label) = set.choose(&mut rng, "Quick #7 (fox): \"jumps\"?").unwrap();
        assert!(font.covers(&label));
        if font.caps_only {
            assert_eq!(label, "QUICK #7 (FOX): \"JUMPS\"?");
        }
    }
    assert!(set.choose(&mut rng, "snowman \u{2603}").is_none());
}

#[test]
fn fonts_by_family_and_file_and_missing_ones() {
    let cfg = SyntheticConfig {
        fonts: vec!["DejaVu Sans".into()],
        ..SyntheticConfig::default()
    };
    let set = FontSet::load(&cfg, IAM_CHARSET).unwrap();
    let names: Vec<&str> = set.fonts().iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"DejaVuSans") && names.contains(&"DejaVuSans-Bold"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("Mono")), "{names:?}");

    let cfg = SyntheticConfig {
        fonts: vec!["Humor-Sans.ttf".into()],
        ..SyntheticConfig::default()
    };
    let set = FontSet::load(&cfg, IAM_CHARSET).unwrap();
    assert_eq!(set.fonts()[0].package, Some("fonts-humor-sans"));

    let cfg = SyntheticConfig {
        fonts: vec!["No Such Family".into()],
        ..SyntheticConfig::default()
    };
    let err = FontSet::load(&cfg, IAM_CHARSET).unwrap_err().to_string();
    assert!(err.contains("No Such Family"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = SyntheticConfig {
        font_dirs: vec![dir.path().display().to_string()],
        ..SyntheticConfig::default()
    };
    let err = FontSet::load(&cfg, IAM_CHARSET).unwrap_err().to_string();
    assert!(err.contains("install the Debian package fonts-"), "{err}");
}

#[cfg(unix)]
#[test]
fn font_folders_are_listed_in_order_through_links_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.join("b/c")).unwrap();
    for f in ["z.TTF", "a.otf", "notes.txt", "b/c/m.ttf", "b/a.ttf"] {
        std::fs::write(d.join(f), b"").unwrap();
    }
    std::fs::write(other.path().join("linked.ttf"), b"").unwrap();
    // Font packages link their folders into one another; a link back up must not hang.
    std::os::unix::fs::symlink(other.path(), d.join("b/pkg")).unwrap();
    std::os::unix::fs::symlink(d, d.join("b/c/up")).unwrap();
    std::os::unix::fs::symlink(d.join("gone.ttf"), d.join("dangling.ttf")).unwrap();
    let names: Vec<String> = font_files(d)
        .iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        ["a.otf", "b/a.ttf", "b/c/m.ttf", "b/pkg/linked.ttf", "z.TTF"]
    );
}

#[test]
fn unseen_validation_fonts_are_refused_for_training() {
    let cfg = SyntheticConfig {
        fonts: vec!["FreeSerif".into()],
        ..SyntheticConfig::default()
    };
    let set = FontSet::load(&cfg, IAM_CHARSET).expect("apt-get install fonts-freefont-ttf");
    let err = set.check_use(TextSplit::Train).unwrap_err().to_string();
    assert!(err.contains("unseen-fonts"), "{err}");
    set.check_use(TextSplit::Descriptions).unwrap();
    training_set().check_use(TextSplit::Train).unwrap();
}

#[test]
fn fonts_outside_the_training_set_are_told_apart() {
    assert_eq!(training_set().outside_training_set().count(), 0);
    let cfg = SyntheticConfig {
        fonts: vec!["FreeSerif".into()],
        ..SyntheticConfig::default()
    };
    let set = FontSet::load(&cfg, IAM_CHARSET).expect("apt-get install fonts-freefont-ttf");
    let outside: Vec<_> = set.outside_training_set().map(|f| &f.family).collect();
    assert!(!outside.is_empty());
    assert_eq!(outside.len(), set.fonts().len(), "{outside:?}");
}

/// Writes `a..z` over `A..Z` in every training font to /tmp/textrec-samples/alphabet-*.png
/// (run with `--ignored` to look at them).
#[test]
#[ignore]
fn render_alphabet_sheets() {
    let set = training_set();
    std::fs::create_dir_all("/tmp/textrec-samples").unwrap();
    for f in set.fonts() {
        let rows = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"];
        let lines: Vec<_> = rows
            .iter()
            .map(|r| crate::data::render::render_plain(&f.font, r, 40.0))
            .collect();
        let w = lines.iter().map(|l| l.width()).max().unwrap() + 20;
        let h: u32 = lines.iter().map(|l| l.height() + 10).sum::<u32>() + 10;
        let mut sheet = image::GrayImage::from_pixel(w, h, image::Luma([255]));
        let mut y = 10;
        for l in &lines {
            image::imageops::overlay(&mut sheet, l, 10, i64::from(y));
            y += l.height() + 10;
        }
        let own: String = own_capital_matches(&f.font).into_iter().collect();
        println!(
            "{:24} caps_only={:5} ascender ratio {:.2}; {:2} letters look most like their capital: {own}",
            f.name,
            f.caps_only,
            ascender_ratio(&f.font).unwrap_or(0.0),
            own.len()
        );
        sheet
            .save(format!("/tmp/textrec-samples/alphabet-{}.png", f.name))
            .unwrap();
    }
}
