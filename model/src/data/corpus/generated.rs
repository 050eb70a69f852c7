//! Generated text: numbers, dates, times, amounts, names and codes, the kinds of field forms
//! and receipts hold, which no prose source has enough of.

use rand::seq::SliceRandom;
use rand::Rng;

use super::{fill, TextPool};

pub(super) const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const CURRENCIES: [&str; 8] = ["EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK"];
const TITLES: [&str; 6] = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Rev."];
/// Form labels that glue generated fields into something that looks like a receipt or form.
const LABELS: [&str; 16] = [
    "Total:", "Date:", "Due", "Paid", "Invoice", "No.", "Ref.", "Tel.", "Room", "Page", "Qty",
    "from", "to", "at", "on", "and",
];

/// Numbers, dates, times, amounts, names and codes, up to `target` characters.
pub(super) fn generated_line<R: Rng>(
    pool: &TextPool,
    rng: &mut R,
    target: usize,
    max: usize,
) -> String {
    fill(target, max, || generated_item(pool, rng))
}

pub(super) fn generated_item<R: Rng>(pool: &TextPool, rng: &mut R) -> String {
    match rng.gen_range(0..10) {
        0 | 1 => number(rng),
        2 | 3 => date(rng),
        4 => time(rng),
        5 | 6 => amount(rng),
        7 => name(pool, rng),
        8 => code(rng),
        _ => LABELS.choose(rng).expect("non-empty").to_string(),
    }
}

pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn magnitude<R: Rng>(rng: &mut R) -> u64 {
    let digits = rng.gen_range(1..=7);
    rng.gen_range(0..10u64.pow(digits))
}

fn number<R: Rng>(rng: &mut R) -> String {
    let n = magnitude(rng);
    match rng.gen_range(0..9) {
        0 => grouped(n),
        1 => format!("{}.{:02}", n % 10_000, rng.gen_range(0..100)),
        2 => format!("-{}", n % 1000),
        3 => format!("{}/{}", rng.gen_range(1..10), rng.gen_range(2..17)),
        4 => {
            let a = n % 500;
            format!("{a}-{}", a + rng.gen_range(1..50))
        }
        5 => {
            let unit = [
                "kg", "g", "km", "m", "cm", "mm", "ml", "l", "lbs", "oz", "ft", "in",
            ]
            .choose(rng)
            .expect("units");
            format!(
                "{}{}{unit}",
                n % 1000,
                if rng.gen_bool(0.7) { " " } else { "" }
            )
        }
        6 => {
            let k = n % 100 + 1;
            let suffix = match (k % 10, k % 100) {
                (_, 11..=13) => "th",
                (1, _) => "st",
                (2, _) => "nd",
                (3, _) => "rd",
                _ => "th",
            };
            format!("{k}{suffix}")
        }
        7 => format!("#{}", n % 10_000),
        _ => n.to_string(),
    }
}

fn date<R: Rng>(rng: &mut R) -> String {
    let (d, m, y) = (
        rng.gen_range(1..=28),
        rng.gen_range(1..=12usize),
        rng.gen_range(1890..=2035),
    );
    let month = MONTHS[m - 1];
    match rng.gen_range(0..9) {
        0 => format!("{d:02}/{m:02}/{y}"),
        1 => format!("{m}/{d}/{:02}", y % 100),
        2 => format!("{y}-{m:02}-{d:02}"),
        3 => format!("{d:02}.{m:02}.{y}"),
        4 => format!("{month} {d}, {y}"),
        5 => format!("{d} {} {y}", &month[..3]),
        6 => format!("{}, {d} {month}", WEEKDAYS.choose(rng).expect("days")),
        7 => format!("{} {y}", month),
        _ => format!("{d}.{m}.{:02}", y % 100),
    }
}

fn time<R: Rng>(rng: &mut R) -> String {
    let (h, m, s) = (
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
    );
    match rng.gen_range(0..4) {
        0 => format!("{h:02}:{m:02}"),
        1 => format!("{h:02}:{m:02}:{s:02}"),
        2 => format!(
            "{}:{m:02} {}",
            h % 12 + 1,
            if rng.gen_bool(0.5) { "am" } else { "pm" }
        ),
        _ => format!(
            "{}.{m:02} {}",
            h % 12 + 1,
            if rng.gen_bool(0.5) { "a.m." } else { "p.m." }
        ),
    }
}

fn amount<R: Rng>(rng: &mut R) -> String {
    let cur = CURRENCIES.choose(rng).expect("currencies");
    let n = magnitude(rng) / 10;
    let value = match rng.gen_range(0..3) {
        0 => grouped(n),
        1 => format!("{}.{:02}", grouped(n), rng.gen_range(0..100)),
        _ => format!("{n}.{:02}", rng.gen_range(0..100)),
    };
    if rng.gen_bool(0.5) {
        format!("{value} {cur}")
    } else {
        format!("{cur} {value}")
    }
}

fn name<R: Rng>(pool: &TextPool, rng: &mut R) -> String {
    let Some(first) = pool.names.choose(rng) else {
        return number(rng);
    };
    let last = pool.names.choose(rng).expect("non-empty");
    let initial = &first[..1];
    match rng.gen_range(0..5) {
        0 => format!("{first} {last}"),
        1 => format!("{initial}. {last}"),
        2 => format!("{last}, {first}"),
        3 => format!("{} {last}", TITLES.choose(rng).expect("titles")),
        _ => format!("{} {initial}. {last}", TITLES.choose(rng).expect("titles")),
    }
}

fn code<R: Rng>(rng: &mut R) -> String {
    let letter = |rng: &mut R| char::from(b'A' + rng.gen_range(0..26u8));
    match rng.gen_range(0..4) {
        0 => format!(
            "{}{}-{:04}",
            letter(rng),
            letter(rng),
            rng.gen_range(0..10_000)
        ),
        1 => format!("{}/{}", rng.gen_range(1..100), rng.gen_range(100..1000)),
        2 => format!(
            "({}) {:03}-{:04}",
            rng.gen_range(200..1000),
            rng.gen_range(0..1000),
            rng.gen_range(0..10_000)
        ),
        _ => format!(
            "+{} {} {:04}",
            rng.gen_range(1..100),
            rng.gen_range(10..1000),
            rng.gen_range(0..10_000)
        ),
    }
}
