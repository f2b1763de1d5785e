//! Percent-encoding with the `percent-encoding` crate and the two sets calbridge needs, plus
//! form decoding (`+` is a space) for query values calbridge receives.
//!
//! Bytes outside ASCII are always encoded (UTF-8, upper-case hex), whatever the set says.

pub use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// What stays raw in a URL path segment: RFC 3986's unreserved characters and `@`, because
/// Graph takes user principal names raw in paths (`/users/ann@contoso.com/events`) and `@` is a
/// legal path character. Everything else, `/` included, is encoded.
pub const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// What stays raw in a query value: the path segment's set plus the punctuation OData
/// expressions use (`:`, `(`, `)`, `,`), which is safe inside a value and keeps logged filters
/// readable. Spaces, quotes, `&`, `=`, `+`, `/` and `#` are encoded.
pub const QUERY_VALUE: &AsciiSet = &PATH_SEGMENT
    .remove(b':')
    .remove(b'(')
    .remove(b')')
    .remove(b',');

/// Encodes `text`: every byte in `encoded_set`, and every non-ASCII byte, becomes `%XX`.
pub fn encode(text: &str, encoded_set: &'static AsciiSet) -> String {
    percent_encoding::utf8_percent_encode(text, encoded_set).to_string()
}

/// Encodes one URL path segment ([`PATH_SEGMENT`]).
pub fn encode_path_segment(segment: &str) -> String {
    encode(segment, PATH_SEGMENT)
}

/// Encodes one query value ([`QUERY_VALUE`]).
pub fn encode_query_value(value: &str) -> String {
    encode(value, QUERY_VALUE)
}

/// What stays raw in an `application/x-www-form-urlencoded` value (WHATWG URL standard):
/// letters, digits and `*-._`; a space becomes `+`.
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

/// Encodes one `application/x-www-form-urlencoded` name or value (a token request's form).
pub fn encode_form_value(value: &str) -> String {
    encode(value, FORM_VALUE).replace(' ', "+")
}

/// Decodes an `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte, a
/// malformed escape stays as it is, and bytes that are not UTF-8 become U+FFFD (a received
/// value is never a reason to fail).
pub fn decode_form_value(value: &str) -> String {
    // `+` is replaced before decoding, so an encoded plus (`%2B`) still decodes to `+`.
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_reserved_characters_but_keep_at() {
        assert_eq!(
            encode_path_segment("ann o'neil@x.com"),
            "ann%20o%27neil@x.com"
        );
        assert_eq!(
            encode_path_segment("a/b?c#d&e=f+g%h"),
            "a%2Fb%3Fc%23d%26e%3Df%2Bg%25h"
        );
        assert_eq!(encode_path_segment("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode_path_segment("(x):y,z"), "%28x%29%3Ay%2Cz");
    }

    #[test]
    fn query_values_keep_odata_punctuation_and_encode_the_rest() {
        assert_eq!(
            encode_query_value("proxyAddresses/any(p:p eq 'smtp:a@b.c')"),
            "proxyAddresses%2Fany(p:p%20eq%20%27smtp:a@b.c%27)"
        );
        assert_eq!(encode_query_value("a&b=c+d#e"), "a%26b%3Dc%2Bd%23e");
    }

    #[test]
    fn non_ascii_is_encoded_as_utf8_bytes() {
        assert_eq!(
            encode_path_segment("jürgen@müller.de"),
            "j%C3%BCrgen@m%C3%BCller.de"
        );
        assert_eq!(encode_query_value("Zoë €"), "Zo%C3%AB%20%E2%82%AC");
        assert_eq!(decode_form_value("j%C3%BCrgen"), "jürgen");
    }

    #[test]
    fn form_values_decode_plus_and_escapes_and_keep_malformed_ones() {
        assert_eq!(
            decode_form_value("Validation%3a+Testing+Request-Id%3a+42"),
            "Validation: Testing Request-Id: 42"
        );
        assert_eq!(decode_form_value("a%2Bb"), "a+b");
        assert_eq!(decode_form_value("abc%2"), "abc%2");
        assert_eq!(decode_form_value("%zz%"), "%zz%");
        assert_eq!(decode_form_value("%FF"), "\u{FFFD}");
    }

    #[test]
    fn encoding_then_decoding_gives_the_text_back() {
        for text in ["ann o'neil@x.com", "a+b&c=d", "Zoë / 100%", ""] {
            assert_eq!(decode_form_value(&encode_query_value(text)), text);
        }
    }
}
