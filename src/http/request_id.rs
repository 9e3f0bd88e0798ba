//! `--request-id`: every request carries an ID in a header (`X-Request-ID`
//! unless `--request-id-header` names another), the one a proxy or client
//! sent when it is sound, else a new one. The app sees it among the request
//! headers (ASGI `headers`, WSGI `HTTP_X_REQUEST_ID`), and the access log can
//! show it (`%({x-request-id}i)s`, JSON's `request_id`), so one request can
//! be followed from the proxy's log through the app's to ours.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header the ID travels in unless `--request-id-header` says otherwise
/// (Heroku's router, nginx's `$request_id` recipes, Django and Rails
/// middlewares all use it).
pub(crate) const DEFAULT_HEADER: &str = "x-request-id";

/// The longest incoming ID kept: Heroku's limit. Longer ones are replaced,
/// so a client cannot make every log line of its requests huge.
pub(crate) const MAX_LEN: usize = 200;

/// Keeps the ID `headers` carry under `name` when it is one sound value
/// (1 to [`MAX_LEN`] visible ASCII characters), else puts a new one in its
/// place (several values count as unsound: which one would be the ID?).
pub(crate) fn ensure(headers: &mut HeaderMap, name: &HeaderName) {
    let mut values = headers.get_all(name).iter();
    let sound = match (values.next(), values.next()) {
        (Some(value), None) => is_sound(value),
        _ => false,
    };
    if !sound {
        headers.insert(name.clone(), generate());
    }
}

fn is_sound(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// A new ID: 128 random bits in hex, as Python's `uuid.uuid4().hex` (and so
/// django-log-request-id) writes them. `rand`'s thread-local generator is
/// seeded from the OS and costs no system call per ID.
fn generate() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    // 32 hex digits are always a valid header value.
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> HeaderName {
        HeaderName::from_static(DEFAULT_HEADER)
    }

    fn ensured(values: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name(), HeaderValue::from_bytes(value).unwrap());
        }
        ensure(&mut headers, &name());
        headers
            .get_all(name())
            .iter()
            .map(|value| value.as_bytes().to_vec())
            .collect()
    }

    fn is_generated(id: &[u8]) -> bool {
        id.len() == 32
            && id
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }

    #[test]
    fn a_sound_id_is_kept() {
        let id = b"req-1234_abc+/=:.~";
        assert_eq!(ensured(&[id]), [id.to_vec()]);
        let longest = vec![b'a'; MAX_LEN];
        assert_eq!(ensured(&[&longest]), [longest]);
    }

    #[test]
    fn a_missing_or_unsound_id_is_replaced() {
        let too_long = vec![b'a'; MAX_LEN + 1];
        for values in [
            &[][..],
            &[b"".as_slice()],
            &[b"has space"],
            &[b"tab\there"],
            &[b"caf\xc3\xa9"],
            &[too_long.as_slice()],
            &[b"one", b"two"],
        ] {
            let ids = ensured(values);
            assert!(
                ids.len() == 1 && is_generated(&ids[0]),
                "{values:?}: {ids:?}"
            );
        }
    }

    #[test]
    fn new_ids_differ() {
        let first = ensured(&[]);
        let second = ensured(&[]);
        assert_ne!(first, second);
    }
}
