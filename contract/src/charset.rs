//! The default character set: the IAM handwriting database's printable characters.
//!
//! The charset a model was trained with is stored in its manifest; this constant is only the
//! default for new training runs.

/// `a-z A-Z 0-9`, space, and `! " # & ' ( ) * + , - . / : ; ?`, in a fixed order (token ids
/// depend on it).
pub const IAM_CHARSET: &str =
    " !\"#&'()*+,-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_charset_has_79_distinct_chars() {
        let mut v: Vec<char> = IAM_CHARSET.chars().collect();
        assert_eq!(v.len(), 79);
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 79);
    }
}
