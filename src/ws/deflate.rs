//! permessage-deflate (RFC 7692): which of a client's offers the server
//! accepts, and with which parameters.
//!
//! The client lists offers in `Sec-WebSocket-Extensions`, best first; the
//! server accepts at most one, the first it can honour, and answers with that
//! offer's parameters as it will apply them (§5, §7.1). An offer with an
//! unknown parameter, a repeated one or a bad value is declined (§7.1), and
//! so is one asking the server for a window of 8 bits, which deflate
//! implementations do not produce (zlib silently uses 9). The server always
//! answers `client_no_context_takeover`, which §7.1.1.2 lets it add to any
//! offer: the client then compresses each message on its own, so the server
//! keeps no decompressor between messages (see `ws::engine_options`).
//! Compression itself is the engine's; this module only settles the terms.

use http::header::{self, HeaderMap};

/// The extension's name in the header (§7).
const NAME: &str = "permessage-deflate";

/// The window sizes the server can compress with: RFC 7692 allows 8 to 15
/// bits (§7.1.2.1), deflate implementations 9 to 15.
const SERVER_WINDOW_BITS: std::ops::RangeInclusive<u8> = 9..=15;

/// The window sizes a client may announce (§7.1.2.2).
const CLIENT_WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;

/// The terms of an accepted permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Agreement {
    /// The server resets its compressor after each message (§7.1.1.1).
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message (§7.1.1.2).
    pub client_no_context_takeover: bool,
    /// The server compresses with at most this window (§7.1.2.1).
    pub server_max_window_bits: Option<u8>,
    /// The client compresses with at most this window (§7.1.2.2).
    pub client_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the response: the extension
    /// and the parameters the server accepted.
    pub(crate) fn header_value(&self) -> String {
        let mut value = String::from(NAME);
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(bits) = self.client_max_window_bits {
            value.push_str(&format!("; client_max_window_bits={bits}"));
        }
        value
    }
}

/// The first permessage-deflate offer in `headers` that the server can
/// honour, as the terms it answers with; `None` when the client offered
/// none (or none acceptable): the connection then runs uncompressed.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Agreement> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_outside_quotes(','))
        .find_map(|offer| {
            let mut parts = split_outside_quotes(';')(offer);
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            let mut agreement = accept_offer(parts)?;
            // The server may impose this whether or not the client offered
            // it (§7.1.1.2); every client must honour it.
            agreement.client_no_context_takeover = true;
            Some(agreement)
        })
}

/// The terms for one offer's parameters, or `None` to decline it.
fn accept_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreement> {
    let mut agreement = Agreement::default();
    let mut seen: Vec<&str> = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return None;
        }
        seen.push(name);
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => agreement.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreement.client_no_context_takeover = true,
            ("server_max_window_bits", Some(bits)) => {
                let bits = window_bits(bits)?;
                if !SERVER_WINDOW_BITS.contains(&bits) {
                    return None;
                }
                agreement.server_max_window_bits = Some(bits);
            }
            // Without a value the client only says it understands the
            // parameter; the server need not limit the client's window.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                agreement.client_max_window_bits = Some(window_bits(bits)?);
            }
            _ => return None,
        }
    }
    Some(agreement)
}

/// A window size: 8 to 15, written without leading zeros (§7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.len() > 2 || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    CLIENT_WINDOW_BITS.contains(&bits).then_some(bits)
}

/// A parameter value, without the quotes of a quoted-string (RFC 6455
/// §9.1 allows either form).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// Splits on `separator` except inside double quotes.
fn split_outside_quotes(separator: char) -> impl Fn(&str) -> std::vec::IntoIter<&str> {
    move |text: &str| {
        let mut parts = Vec::new();
        let mut start = 0;
        let mut quoted = false;
        for (at, c) in text.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    parts.push(&text[start..at]);
                    start = at + c.len_utf8();
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        parts.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offer(values: &[&str]) -> Option<Agreement> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        negotiate(&headers)
    }

    fn answer(values: &[&str]) -> Option<String> {
        offer(values).map(|agreement| agreement.header_value())
    }

    #[test]
    fn no_offer_no_compression() {
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn a_plain_offer_is_accepted_with_client_no_context_takeover() {
        assert_eq!(
            answer(&["permessage-deflate"]).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        // What browsers and the websockets library send.
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn context_takeover_parameters_are_echoed() {
        assert_eq!(
            answer(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }

    #[test]
    fn window_bits_are_accepted_in_range() {
        let agreement =
            offer(&["permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"])
                .unwrap();
        assert_eq!(agreement.server_max_window_bits, Some(10));
        assert_eq!(agreement.client_max_window_bits, Some(12));
        assert_eq!(
            agreement.header_value(),
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; \
             client_max_window_bits=12"
        );
        assert_eq!(
            offer(&["permessage-deflate; server_max_window_bits=\"15\""])
                .unwrap()
                .server_max_window_bits,
            Some(15)
        );
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits=8"])
                .unwrap()
                .client_max_window_bits,
            Some(8)
        );
    }

    #[test]
    fn offers_the_server_cannot_honour_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=ten",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; x_unknown",
            "permessage-deflate; server_max_window_bits=\"10",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        assert_eq!(
            answer(&[
                "permessage-deflate; server_max_window_bits=8, \
                 permessage-deflate; server_max_window_bits=9",
                "permessage-deflate",
            ])
            .as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9")
        );
        assert_eq!(
            answer(&["foo; bar=\"a,b\", permessage-deflate; client_no_context_takeover"])
                .as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(
            answer(&["PerMessage-Deflate; Server_No_Context_Takeover"]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }
}
