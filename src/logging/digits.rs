//! Fixed-width decimal fields for log lines: the timestamp's date, time and
//! microseconds, the access line's milliseconds. Written digit by digit into
//! a byte buffer, since `{:02}`-style formatting goes through the formatting
//! machinery for every field of every line.

/// Writes `value` into all of `field`, zero-padded on the left; a value too
/// wide for the field keeps its lowest digits.
pub(crate) fn zero_padded(field: &mut [u8], mut value: u64) {
    for digit in field.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The field as text: it holds only what [`zero_padded`] and the caller's
/// ASCII punctuation wrote.
pub(crate) fn ascii(field: &[u8]) -> Result<&str, std::fmt::Error> {
    std::str::from_utf8(field).map_err(|_| std::fmt::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(width: usize, value: u64) -> String {
        let mut field = vec![b'?'; width];
        zero_padded(&mut field, value);
        ascii(&field).unwrap().to_owned()
    }

    #[test]
    fn values_are_padded_to_the_width() {
        assert_eq!(padded(2, 7), "07");
        assert_eq!(padded(4, 2026), "2026");
        assert_eq!(padded(6, 42), "000042");
        assert_eq!(padded(3, 0), "000");
        assert_eq!(padded(0, 5), "");
    }

    #[test]
    fn a_value_too_wide_keeps_its_lowest_digits() {
        assert_eq!(padded(3, 12_345), "345");
        assert_eq!(padded(2, u64::MAX), "15");
    }
}
