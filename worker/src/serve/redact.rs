//! Storage URLs as the server shows them (`/v1/model`, `GetModel`): without credentials, query
//! strings or fragments. Model and flag locations may be presigned URLs or carry a user and
//! password, and anyone who can reach the HTTP port can read `/v1/model`. Scheme, host and
//! path stay, so an operator can still tell which model is served.

/// `s` with the user, password, query and fragment removed when it is a URL; anything else
/// (a plain path, `builtin:small`) as it is.
pub fn redact_url(s: &str) -> String {
    let Ok(mut url) = url::Url::parse(s) else {
        return s.to_string();
    };
    let secret = !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some();
    if !secret {
        // Unchanged, spelled as given (the parser would normalize it).
        return s.to_string();
    }
    // Both fail only for URLs that cannot have credentials (`mailto:`, `data:`), which have
    // none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Free text (an error message) with every URL in it redacted as by [`redact_url`].
pub fn redact_text(s: &str) -> String {
    if !s.contains("://") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        // The URL starts after the last delimiter before `://` and ends at the next one.
        let start = rest[..i].rfind(is_delimiter).map_or(0, |d| {
            d + rest[d..].chars().next().map_or(1, char::len_utf8)
        });
        let end = rest[i..].find(is_delimiter).map_or(rest.len(), |e| i + e);
        // Sentence punctuation after a URL is not part of it.
        let url_end = start
            + rest[start..end]
                .trim_end_matches(['.', ',', ';', ':'])
                .len();
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..url_end]));
        out.push_str(&rest[url_end..end]);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}'
        )
}

/// Every string inside a JSON value redacted as by [`redact_text`] (a manifest's provenance
/// holds the whole training config, data URLs included).
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains("://") => *s = redact_text(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_removed_and_the_rest_kept() {
        assert_eq!(
            redact_url("https://user:secret@storage.example/models/a/?X-Amz-Signature=abc#frag"),
            "https://storage.example/models/a/"
        );
        assert_eq!(
            redact_url("s3://bucket/models/run-1/"),
            "s3://bucket/models/run-1/"
        );
        assert_eq!(redact_url("/data/models/a"), "/data/models/a");
        assert_eq!(redact_url("builtin:small"), "builtin:small");
        assert_eq!(redact_url("gs://key@bucket/m?token=t"), "gs://bucket/m");
    }

    #[test]
    fn urls_inside_text_and_json_are_redacted() {
        assert_eq!(
            redact_text("cannot fetch (https://u:p@host/m/manifest.json?sig=1): 403."),
            "cannot fetch (https://host/m/manifest.json): 403."
        );
        assert_eq!(
            redact_text("load s3://b/m?x=1, then gs://c/n"),
            "load s3://b/m, then gs://c/n"
        );
        assert_eq!(redact_text("no urls here"), "no urls here");
        let mut v = serde_json::json!({"config": {"data": ["https://a:b@h/d?t=1"], "steps": 3}});
        redact_json(&mut v);
        assert_eq!(v["config"]["data"][0], "https://h/d");
        assert_eq!(v["config"]["steps"], 3);
    }
}
