//! Small helpers.

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_bounds_and_chars() {
        assert_eq!(super::truncate("abc", 5), "abc");
        let t = super::truncate(&"é".repeat(100), 11);
        assert!(t.len() <= 11 && t.ends_with('…'));
    }
}
