//! Escaping and formatting for the dashboard's HTML. Every name, label, parameter and message
//! shown comes from users (object names, labels, hyperparameters, status messages) and goes
//! through [`esc`] (text and attribute values) or [`url_part`] (inside links).

use std::fmt::Write as _;

/// `s` escaped for HTML text and for quoted attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a URL path segment or query value: everything but ASCII letters,
/// digits and `-._~` is encoded (so `/`, `?`, `&`, `=` and quotes cannot break out).
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A metric value with 4 significant decimals (`0.1043`), or `–` when unknown.
pub fn metric(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "–".into(),
    }
}

/// A duration in seconds as `kubectl` prints ages: `45s`, `12m`, `3h20m`, `4d2h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{}h", s / 3600)
            } else {
                format!("{}h{m}m", s / 3600)
            }
        }
        _ => {
            let h = (s % 86_400) / 3600;
            if h == 0 {
                format!("{}d", s / 86_400)
            } else {
                format!("{}d{h}h", s / 86_400)
            }
        }
    }
}

/// The first 12 hex digits of a sha256, the way image digests are shortened.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain-name.1"), "plain-name.1");
        assert_eq!(esc("ünïcode"), "ünïcode");
    }

    #[test]
    fn url_parts_cannot_break_out() {
        assert_eq!(url_part("run-1.a_b~"), "run-1.a_b~");
        assert_eq!(url_part("a/b?c=d&e\"'<"), "a%2Fb%3Fc%3Dd%26e%22%27%3C");
        assert_eq!(url_part("app=ocr,tier!=x"), "app%3Docr%2Ctier%21%3Dx");
    }

    #[test]
    fn ages_and_metrics() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3600 * 3 + 1200), "3h20m");
        assert_eq!(age(86_400 * 4 + 7200), "4d2h");
        assert_eq!(age(-3), "0s");
        assert_eq!(metric(Some(0.104_332)), "0.1043");
        assert_eq!(metric(None), "–");
        assert_eq!(short_sha("6d102ef95fde297e9bac"), "6d102ef95fde");
    }
}
