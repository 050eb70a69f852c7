//! Synthetic line throughput on one core: render + augment + preprocess, per augmentation
//! strength. `cargo bench -p textrec-model --bench data` (set `TEXTREC_SAMPLES_DIR` to also
//! write the first lines of each run as PNGs).

use std::time::Instant;

use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{DatasetSpec, PreprocessConfig, SyntheticConfig};
use textrec_model::data::open_dataset;
use textrec_model::preprocess::prepare;

fn main() {
    let lines: u64 = std::env::var("TEXTREC_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let samples_dir = std::env::var("TEXTREC_SAMPLES_DIR").ok();
    let pre = PreprocessConfig::default();
    for augment in [0.0, 0.5, 1.0] {
        let spec = DatasetSpec {
            synthetic: SyntheticConfig {
                augment,
                ..SyntheticConfig::default()
            },
            ..DatasetSpec::default()
        };
        let ds =
            open_dataset(&spec, 1, IAM_CHARSET).expect("training fonts and corpus are installed");
        if let Some(dir) = &samples_dir {
            std::fs::create_dir_all(dir).unwrap();
            for i in 0..4 {
                let s = ds.get(i).unwrap();
                let path = format!("{dir}/line-aug{augment:.1}-{i}.png");
                s.image.save(&path).unwrap();
                // What the network sees: ink bright on black.
                let p = prepare(&s.image, &pre).unwrap();
                let net = image::GrayImage::from_fn(p.width, p.height, |x, y| {
                    image::Luma([(255.0 * p.data[(y * p.width + x) as usize]).round() as u8])
                });
                net.save(format!("{dir}/line-aug{augment:.1}-{i}-prepared.png"))
                    .unwrap();
                println!("{path}: {:?}", s.text);
            }
        }
        ds.get(0).unwrap();
        let start = Instant::now();
        let (mut chars, mut pixels) = (0usize, 0u64);
        for i in 0..lines {
            let s = ds.get(i).unwrap();
            chars += s.text.chars().count();
            pixels += u64::from(s.image.width()) * u64::from(s.image.height());
            let p = prepare(&s.image, &pre).unwrap();
            std::hint::black_box(p);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "augment {augment:.1}: {:.0} lines/s on one thread ({lines} lines, {:.1} chars and {:.0} source pixels per line)",
            lines as f64 / secs,
            chars as f64 / lines as f64,
            pixels as f64 / lines as f64
        );
    }
}
