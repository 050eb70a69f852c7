use super::generated::{generated_item, grouped, MONTHS};
use super::sources::{
    documentation_paragraphs, looks_like_prose, package_descriptions, split_fortunes,
    DescriptionsSource, BUILTIN_DESCRIPTIONS,
};
use super::*;
use rand::SeedableRng;
use textrec_contract::charset::IAM_CHARSET;

fn iam() -> HashSet<char> {
    IAM_CHARSET.chars().collect()
}

#[test]
fn mapping_replaces_typography_and_drops_unsupported_words() {
    let m = |s: &str| map_into_charset(s, &iam());
    assert_eq!(
        m("It\u{2019}s \u{201c}fine\u{201d} \u{2014} [ok]"),
        "It's \"fine\" - (ok)"
    );
    assert_eq!(m("costs $5 or 10%, mail a@b.c\tnow\n"), "costs or mail now");
    assert_eq!(m("_\u{8}b_\u{8}o_\u{8}l_\u{8}d text"), "bold text");
    assert_eq!(m("  \u{e9}t\u{e9} caf\u{e9}  "), "");
}

#[test]
fn fortunes_split_on_percent_lines() {
    let f = "First one\nspans lines.\n%\n\n%\nSecond.\n%\n";
    assert_eq!(
        split_fortunes(f),
        vec!["First one\nspans lines.\n", "Second.\n"]
    );
    assert!(!looks_like_prose("/\\_/\\ ( o.o ) > ^ <"));
    assert!(looks_like_prose("A day for firm decisions!!!!! Or is it?"));
}

#[test]
fn split_is_disjoint_and_stable() {
    let fortunes: Vec<String> = (0..400)
        .map(|i| format!("Fortune number {i} says hello there.\n%\n"))
        .collect();
    let file = fortunes.concat();
    let words: String = (0..400)
        .map(|i| format!("word{i}\nName{}\n", char::from(b'a' + (i % 26) as u8)))
        .collect();
    let c = Corpus::from_texts(&[&file], &words, IAM_CHARSET);
    let (t, v) = (c.stats(TextSplit::Train), c.stats(TextSplit::Validation));
    assert_eq!(t.passages + v.passages, 400);
    assert!(v.passages > 5 && v.passages < 45, "{v:?}");
    let train: HashSet<&String> = c.train.passages.iter().chain(&c.train.words).collect();
    assert!(c
        .validation
        .passages
        .iter()
        .chain(&c.validation.words)
        .all(|p| !train.contains(p)));
    assert!(c.validation.passages.iter().all(|p| is_validation(p)));
    assert_eq!(t.names + v.names, 26, "NameA..NameZ, deduplicated");
}

#[test]
fn lines_respect_length_and_charset() {
    let c = Corpus::from_texts(
        &["The quick brown fox jumps over the lazy dog, again and again.\n%\nShort one here.\n%\n"],
        "Aaron\nabbey\nAbbott's\nzebra\ncaf\u{e9}\n",
        IAM_CHARSET,
    );
    let set = iam();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for split in [TextSplit::Train, TextSplit::Validation] {
        for (min, max) in [(1, 32), (5, 12), (20, 40)] {
            for _ in 0..300 {
                let l = c.sample_line(split, &mut rng, min, max, None, 0.3);
                let n = l.chars().count();
                assert!((min..=max).contains(&n), "{l:?} not in {min}..={max}");
                assert!(l.chars().all(|ch| set.contains(&ch)), "{l:?}");
                assert_eq!(l, l.trim());
                assert!(!l.contains("  "), "{l:?}");
            }
        }
    }
}

#[test]
fn generated_items_cover_the_kinds() {
    let pool = TextPool {
        names: vec!["Aaron".into(), "Abbott".into()],
        ..TextPool::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let items: Vec<String> = (0..400).map(|_| generated_item(&pool, &mut rng)).collect();
    let has = |pred: &dyn Fn(&str) -> bool| items.iter().any(|i| pred(i));
    assert!(has(&|i| i.contains("EUR") || i.contains("USD")));
    assert!(has(&|i| MONTHS.iter().any(|m| i.contains(m))));
    assert!(has(
        &|i| i.contains(':') && i.chars().next().unwrap().is_ascii_digit()
    ));
    assert!(has(&|i| i.contains("Abbott")));
    assert!(items.iter().all(|i| !i.contains('$')));
    assert_eq!(grouped(3200), "3,200");
    assert_eq!(grouped(1234567), "1,234,567");
    assert_eq!(grouped(999), "999");
}

#[test]
fn missing_sources_name_their_packages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SyntheticConfig {
        fortunes_dir: dir.path().join("nope").display().to_string(),
        ..SyntheticConfig::default()
    };
    let err = format!("{:#}", Corpus::load(&cfg, IAM_CHARSET).unwrap_err());
    assert!(err.contains("fortunes"), "{err}");
    let cfg = SyntheticConfig {
        words_file: dir.path().join("words").display().to_string(),
        ..SyntheticConfig::default()
    };
    let err = format!("{:#}", Corpus::load(&cfg, IAM_CHARSET).unwrap_err());
    assert!(err.contains("wamerican"), "{err}");
}

#[test]
fn lines_break_passages_at_spaces_and_group_words() {
    let file: String = (0..50)
        .map(|i| format!("Fortune {i} says the quick brown fox jumps over the dog.\n%\n"))
        .collect();
    let words: String = (0..50).map(|i| format!("word{i}\n")).collect();
    let c = Corpus::from_texts(&[&file], &words, IAM_CHARSET);
    let mut words_seen = 0;
    for split in [TextSplit::Train, TextSplit::Validation] {
        let lines = c.lines(split, 20);
        let (listed, prose): (Vec<&String>, Vec<&String>) =
            lines.iter().partition(|l| l.starts_with("word"));
        assert!(
            prose
                .iter()
                .all(|l| l.len() <= 20 && !l.starts_with(' ') && !l.ends_with(' ')),
            "{prose:?}"
        );
        assert!(
            listed.iter().all(|l| l.split(' ').count() <= 8),
            "{listed:?}"
        );
        words_seen += lines.iter().map(|l| l.split(' ').count()).sum::<usize>();
    }
    // Every word of every fortune and of the list, once.
    assert_eq!(words_seen, 50 * 11 + 50);
}

#[test]
fn system_corpus_loads_with_a_held_out_split() {
    let c = Corpus::load(&SyntheticConfig::default(), IAM_CHARSET)
        .expect("apt-get install fortunes fortunes-min wamerican");
    let (t, v) = (c.stats(TextSplit::Train), c.stats(TextSplit::Validation));
    println!("train {t:?}\nvalidation {v:?}");
    assert!(t.passages > 5_000 && t.words > 50_000, "{t:?}");
    assert!(v.passages > 200 && v.words > 2_000, "{v:?}");
    assert!(v.passages * 10 < t.passages);
}

#[test]
fn training_and_validation_sets_share_one_loaded_corpus() {
    let train = SyntheticConfig::default();
    let descriptions = SyntheticConfig {
        split: TextSplit::Descriptions,
        ..SyntheticConfig::default()
    };
    let a = Corpus::load(&train, IAM_CHARSET).expect("apt-get install fortunes wamerican");
    let b = Corpus::load(&descriptions, IAM_CHARSET).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "loaded twice");
    assert!(a.stats(TextSplit::Descriptions).passages > 700);
}

#[test]
fn the_descriptions_split_reads_the_shipped_text_unless_a_file_is_named() {
    let shipped = package_descriptions(BUILTIN_DESCRIPTIONS);
    assert_eq!(shipped.len(), 757);
    let cfg = SyntheticConfig {
        split: TextSplit::Descriptions,
        ..SyntheticConfig::default()
    };
    assert_eq!(DescriptionsSource::of(&cfg), DescriptionsSource::Shipped);
    let c = Corpus::load(&cfg, IAM_CHARSET).expect("apt-get install fortunes wamerican");
    let d = c.stats(TextSplit::Descriptions);
    assert!(d.passages > 700 && d.prose_words > 40_000, "{d:?}");
    assert_eq!(
        c.pool(TextSplit::Descriptions).passages[0],
        map_into_charset(&shipped[0], &IAM_CHARSET.chars().collect::<HashSet<_>>())
    );

    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(
        &status,
        "Package: a\nDescription: a tool that reads printed lines of text\n",
    )
    .unwrap();
    let named = SyntheticConfig {
        descriptions_file: status.display().to_string(),
        ..cfg.clone()
    };
    let c = Corpus::load(&named, IAM_CHARSET).unwrap();
    assert_eq!(c.stats(TextSplit::Descriptions).passages, 1);

    let missing = SyntheticConfig {
        descriptions_file: dir.path().join("nope").display().to_string(),
        ..cfg
    };
    let err = format!("{:#}", Corpus::load(&missing, IAM_CHARSET).unwrap_err());
    assert!(err.contains("nope") && err.contains("empty"), "{err}");
}

#[test]
fn package_descriptions_join_synopsis_and_extended_text() {
    let status = "Package: a\nDescription: tool for things\n First line of more.\n .\n \
                  Second paragraph.\nHomepage: x\n\nPackage: b\nDescription: other one\n";
    assert_eq!(
        package_descriptions(status),
        [
            "tool for things First line of more. Second paragraph.",
            "other one"
        ]
    );
    let mut c = Corpus::from_texts(&[], "Alpha\nbeta\n", IAM_CHARSET);
    c.add_descriptions(status);
    let d = c.stats(TextSplit::Descriptions);
    assert_eq!(d.passages, 2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let line = c.sample_line(TextSplit::Descriptions, &mut rng, 4, 40, Some(20), 0.0);
    assert!((4..=40).contains(&line.chars().count()), "{line:?}");
}

#[test]
fn printed_lengths_centre_on_the_mean_with_a_short_tail() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut n: Vec<usize> = (0..20_000)
        .map(|_| draw_length(&mut rng, 8, 100, Some(45)))
        .collect();
    n.sort_unstable();
    let mean = n.iter().sum::<usize>() as f64 / n.len() as f64;
    let median = n[n.len() / 2];
    assert!((44.0..52.0).contains(&mean), "mean {mean}");
    assert!((44..=52).contains(&median), "median {median}");
    assert!(n[0] >= 8 && *n.last().unwrap() <= 100);
    assert!(
        n[n.len() / 10] < 35,
        "too few short lines: p10 {}",
        n[n.len() / 10]
    );
    assert!(
        *n.last().unwrap() > 85,
        "no long lines: max {}",
        n.last().unwrap()
    );
    // Without a mean, uniform.
    let u: Vec<usize> = (0..1000)
        .map(|_| draw_length(&mut rng, 1, 4, None))
        .collect();
    assert!((1..=4).all(|k| u.contains(&k)));
}

#[test]
fn documentation_paragraphs_come_from_plain_text_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("pkg-a")).unwrap();
    std::fs::write(
        d.join("pkg-a/README.Debian"),
        "Notes for this package\nspan two lines.\n\n\n  Second paragraph here.  \n",
    )
    .unwrap();
    std::fs::write(d.join("pkg-a/NEWS"), "Version 2 changed the defaults.").unwrap();
    std::fs::write(
        d.join("pkg-a/guide.md"),
        "## 1.2.3\n\nRead the guide first.\n",
    )
    .unwrap();
    // Not read: compressed, not named like documentation, binary, or behind a link.
    std::fs::write(d.join("pkg-a/changelog.gz"), "gzip bytes here").unwrap();
    std::fs::write(d.join("pkg-a/copyright"), "License terms apply.").unwrap();
    std::fs::write(d.join("pkg-a/data.txt"), b"binary\0stuff").unwrap();
    std::os::unix::fs::symlink(d.join("pkg-a"), d.join("pkg-b")).unwrap();

    let got = documentation_paragraphs(d).unwrap();
    assert_eq!(
        got,
        [
            "Version 2 changed the defaults.",
            "Notes for this package span two lines.",
            "Second paragraph here.",
            "## 1.2.3",
            "Read the guide first.",
        ]
    );
    // As a corpus split: the version heading is not prose, the rest is.
    let mut c = Corpus::from_texts(&[], "Alpha\nbeta\n", IAM_CHARSET);
    c.set_descriptions(got);
    assert_eq!(c.stats(TextSplit::Descriptions).passages, 4);

    // A package's folder gives at most so many words.
    let long = "word ".repeat(1000);
    std::fs::create_dir_all(d.join("pkg-c")).unwrap();
    std::fs::write(d.join("pkg-c/README"), format!("{long}\n\n").repeat(20)).unwrap();
    let got = documentation_paragraphs(d).unwrap();
    assert_eq!(got.len(), 5 + 5, "{:?}", got.len());

    let err = documentation_paragraphs(&d.join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
