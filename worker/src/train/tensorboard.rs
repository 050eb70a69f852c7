//! TensorBoard event files, so `tensorboard --logdir <storage>/<run>` shows every trial of a run.
//!
//! The file is derived from `metrics.jsonl` (plus a few validation images) and rewritten whole
//! whenever that file is, for the same reason: object stores cannot append. So it always
//! agrees with `metrics.jsonl`, also after a resume dropped the steps that run again. Each
//! trial's prefix holds one file, [`layout::TENSORBOARD_EVENTS`], and TensorBoard names the
//! trial's curves after its folder.
//!
//! The format is TensorFlow's: a sequence of records, each `len: u64 LE`, `masked_crc32c(len)`,
//! the bytes of an `Event` protobuf, `masked_crc32c(bytes)`. The messages below carry the field
//! numbers of `tensorflow/core/util/event.proto` and `summary.proto` that scalars, images and
//! text summaries need; no maintained crate writes these files, and the subset is small.
//!
//! [`layout::TENSORBOARD_EVENTS`]: textrec_contract::layout::TENSORBOARD_EVENTS

use textrec_contract::metrics::{MetricsRecord, RecordKind};

/// `tensorflow.Event`: one timestamped entry of the file.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EventWhat {
    /// The first event of every file names the format version.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 4, 8")]
    kind: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.Summary.Image`: an encoded PNG.
#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 1: grayscale.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// `tensorflow.SummaryMetadata`: which plugin shows the value.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// `tensorflow.TensorProto`, as the text plugin reads it: a scalar string.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    /// `DT_STRING`.
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShape {}

const DT_STRING: i32 = 7;
const GRAYSCALE: i32 = 1;

/// A PNG to show under `tag` at step 0 (validation lines, whose predictions the text summaries
/// give at every evaluation).
#[derive(Debug, Clone)]
pub struct TaggedImage {
    /// TensorBoard tag, e.g. `validation/line-0`.
    pub tag: String,
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
    /// PNG bytes.
    pub png: Vec<u8>,
}

/// The start of a file: its format version, then `images` at step 0, stamped `start` (the
/// first record's wall time).
pub fn header(start: f64, images: &[TaggedImage]) -> Vec<u8> {
    let mut out = Vec::new();
    write_record(
        &mut out,
        &Event {
            wall_time: start,
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        },
    );
    if !images.is_empty() {
        let value = images
            .iter()
            .map(|i| SummaryValue {
                tag: i.tag.clone(),
                metadata: None,
                kind: Some(ValueKind::Image(Image {
                    height: i.height as i32,
                    width: i.width as i32,
                    colorspace: GRAYSCALE,
                    encoded_image_string: i.png.clone(),
                })),
            })
            .collect();
        write_summary(&mut out, start, 0, value);
    }
    out
}

/// The encoded event of one record (nothing for a record with no finite value).
pub fn record_events(r: &MetricsRecord) -> Vec<u8> {
    let mut out = Vec::new();
    let value = summary_values(r);
    if !value.is_empty() {
        write_summary(&mut out, wall_time(r), r.step as i64, value);
    }
    out
}

/// A record's wall time, in seconds since the epoch, as TensorBoard stamps events.
pub fn wall_time(r: &MetricsRecord) -> f64 {
    r.time.timestamp_micros() as f64 / 1e6
}

/// The scalars (and prediction tables) one `metrics.jsonl` record holds.
fn summary_values(r: &MetricsRecord) -> Vec<SummaryValue> {
    let mut v = Vec::new();
    let mut scalar = |tag: String, x: Option<f64>| {
        if let Some(x) = x.filter(|x| x.is_finite()) {
            v.push(SummaryValue {
                tag,
                metadata: None,
                kind: Some(ValueKind::SimpleValue(x as f32)),
            });
        }
    };
    match r.kind {
        RecordKind::Train => {
            scalar("train/loss".into(), r.loss);
            scalar("train/lr".into(), r.lr);
            scalar("train/samples_per_sec".into(), r.samples_per_sec);
            scalar("train/peak_rss_mib".into(), r.peak_rss_mib);
        }
        RecordKind::Eval => {
            for (set, s) in &r.sets {
                scalar(format!("cer/{set}"), Some(s.cer));
                scalar(format!("wer/{set}"), Some(s.wer));
            }
            if r.sets.is_empty() {
                scalar("cer/validation".into(), r.cer);
                scalar("wer/validation".into(), r.wer);
            }
            for (set, s) in &r.sets {
                if !s.samples.is_empty() {
                    v.push(text(format!("predictions/{set}"), &predictions_table(s)));
                }
            }
        }
    }
    v
}

/// A Markdown table of a set's sample readings (the text plugin renders Markdown).
fn predictions_table(s: &textrec_contract::metrics::SetScore) -> String {
    let mut t = String::from("| reference | read |\n| --- | --- |\n");
    for p in &s.samples {
        t.push_str(&format!(
            "| {} | {} |\n",
            markdown_cell(&p.reference),
            markdown_cell(&p.prediction)
        ));
    }
    t
}

/// A table cell that shows the text as it is (no Markdown, no column breaks).
fn markdown_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    out.push_str(&s.replace('`', "'").replace('|', "\\|"));
    out.push('`');
    out
}

fn text(tag: String, body: &str) -> SummaryValue {
    SummaryValue {
        tag,
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "text".into(),
                content: Vec::new(),
            }),
        }),
        kind: Some(ValueKind::Tensor(TensorProto {
            dtype: DT_STRING,
            tensor_shape: Some(TensorShape {}),
            string_val: vec![body.as_bytes().to_vec()],
        })),
    }
}

fn write_summary(out: &mut Vec<u8>, wall_time: f64, step: i64, value: Vec<SummaryValue>) {
    write_record(
        out,
        &Event {
            wall_time,
            step,
            what: Some(EventWhat::Summary(Summary { value })),
        },
    );
}

/// Appends one TFRecord holding `event`.
fn write_record(out: &mut Vec<u8>, event: &Event) {
    let data = prost::Message::encode_to_vec(event);
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&masked_crc(&data).to_le_bytes());
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC over data that holds CRCs
/// stays well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use textrec_contract::metrics::{SamplePrediction, SetScore};

    /// The whole event file for these records, as the metrics log writes it.
    fn event_file(records: &[MetricsRecord], images: &[TaggedImage]) -> Vec<u8> {
        let mut out = header(records.first().map_or(0.0, wall_time), images);
        for r in records {
            out.extend(record_events(r));
        }
        out
    }

    /// Splits a file into its records' payloads, checking every length and checksum.
    fn records(mut file: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while !file.is_empty() {
            let len_bytes = &file[..8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(file[8..12].try_into().unwrap()),
                masked_crc(len_bytes)
            );
            let data = &file[12..12 + len];
            assert_eq!(
                u32::from_le_bytes(file[12 + len..16 + len].try_into().unwrap()),
                masked_crc(data)
            );
            out.push(Event::decode(data).unwrap());
            file = &file[16 + len..];
        }
        out
    }

    fn record(kind: RecordKind, step: u64) -> MetricsRecord {
        serde_json::from_value(serde_json::json!({
            "kind": kind, "step": step, "time": "2026-11-30T12:00:00Z", "elapsed_s": 1.0,
        }))
        .unwrap()
    }

    #[test]
    fn checksums_are_tfrecords_masked_crc32c() {
        // CRC-32C's check value, then the mask TFRecord applies (rotate right 15, add a constant).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn the_file_holds_the_version_images_and_every_records_values() {
        let mut train = record(RecordKind::Train, 5);
        train.loss = Some(2.5);
        train.lr = Some(1e-3);
        train.samples_per_sec = Some(f64::NAN);
        let mut eval = record(RecordKind::Eval, 10);
        eval.sets.insert(
            "validation".into(),
            SetScore {
                cer: 0.25,
                wer: 0.5,
                lines: 2,
                by_length: vec![],
                samples: vec![SamplePrediction {
                    reference: "a|b".into(),
                    prediction: "ab".into(),
                }],
            },
        );
        let image = TaggedImage {
            tag: "validation/line-0".into(),
            height: 32,
            width: 8,
            png: vec![1, 2, 3],
        };
        let events = records(&event_file(&[train, eval], &[image]));
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].what,
            Some(EventWhat::FileVersion("brain.Event:2".into()))
        );
        let values = |e: &Event| match &e.what {
            Some(EventWhat::Summary(s)) => s.value.clone(),
            other => panic!("not a summary: {other:?}"),
        };
        assert!(matches!(
            values(&events[1])[0].kind,
            Some(ValueKind::Image(Image {
                height: 32,
                width: 8,
                ..
            }))
        ));
        let train = values(&events[2]);
        assert_eq!(events[2].step, 5);
        let tags: Vec<&str> = train.iter().map(|v| v.tag.as_str()).collect();
        assert_eq!(tags, ["train/loss", "train/lr"], "a NaN is left out");
        assert_eq!(train[0].kind, Some(ValueKind::SimpleValue(2.5)));
        let eval = values(&events[3]);
        let tags: Vec<&str> = eval.iter().map(|v| v.tag.as_str()).collect();
        assert_eq!(
            tags,
            ["cer/validation", "wer/validation", "predictions/validation"]
        );
        let Some(ValueKind::Tensor(t)) = &eval[2].kind else {
            panic!("text is a string tensor")
        };
        let table = String::from_utf8(t.string_val[0].clone()).unwrap();
        assert!(table.contains("| `a\\|b` | `ab` |"), "{table}");
        assert_eq!(events[3].wall_time, 1_796_040_000.0);
    }
}
