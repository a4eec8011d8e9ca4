//! Text cut to a length in bytes, on a character boundary (for messages and lines that must
//! stay bounded).

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s`, or, when longer than `max` bytes, its [`prefix`] of `max` bytes followed by " …".
pub fn shortened(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match prefix(s, max) {
        cut if cut.len() < s.len() => format!("{cut} …").into(),
        _ => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("", 0), "");
        assert_eq!(shortened("héllo", 3), "hé …");
        assert_eq!(shortened("héllo", 6), "héllo");
    }
}
