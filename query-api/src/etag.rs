//! Entity tags of order views: the view's version, quoted (`"7"`), the same number command-api
//! answers in its `ETag`. A version only grows, so equal tags mean equal views.

use axum::http::HeaderValue;

pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// Whether `If-None-Match` matches the current version, by the weak comparison RFC 9110 asks for
/// (`W/"7"` matches `"7"`); `*` matches any existing view; lists are comma separated.
pub fn if_none_match_matches(header: Option<&HeaderValue>, version: i64) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let current = etag(version);
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(header: &str, version: i64) -> bool {
        if_none_match_matches(Some(&HeaderValue::from_str(header).unwrap()), version)
    }

    #[test]
    fn the_etag_is_the_quoted_version() {
        assert_eq!(etag(7), "\"7\"");
    }

    #[test]
    fn the_current_tag_matches_and_older_ones_do_not() {
        assert!(matches("\"7\"", 7));
        assert!(!matches("\"6\"", 7));
        assert!(!matches("7", 7), "an unquoted tag is not a tag");
        assert!(!if_none_match_matches(None, 7));
    }

    #[test]
    fn lists_weak_tags_and_star_match() {
        assert!(matches("\"5\", \"7\"", 7));
        assert!(matches("W/\"7\"", 7));
        assert!(matches("*", 1));
        assert!(!matches("\"70\"", 7));
    }
}
