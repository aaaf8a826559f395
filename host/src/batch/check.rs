//! The check of every batch a plugin returns: exactly one JSON array, judged the way
//! `serde_json` judges it, and its record count.
//!
//! Self-contained (serde and serde_json only), so that the validator comparison in
//! `tests/validator-bench` measures this very file.

use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Validates that `bytes` are exactly one JSON array, and counts its elements,
/// without building the records.
///
/// The verdict is `serde_json`'s own: the bytes pass if and only if
/// `serde_json::from_slice::<serde_json::Value>` parses them as an array. Two passes
/// get there, both allocation-free:
///
/// 1. [`count_plain`], a scanner for the plain JSON that serializers write (valid
///    UTF-8, the short escapes, numbers that cannot overflow, moderate nesting),
///    which skips string contents eight bytes at a time. It says "valid, with this
///    count" only for bytes serde_json certainly accepts, and "not sure" for
///    anything else, never "invalid".
/// 2. Only when it is not sure, [`count_strict`]: serde_json's own parser gives the
///    verdict and, for invalid bytes, the message.
///
/// The `Err` is what is wrong, in lowercase, with the position.
pub(crate) fn count_array(bytes: &[u8]) -> Result<usize, String> {
    if bytes.is_empty() {
        return Err(
            "no bytes, where a JSON array was expected (an empty batch is `[]`)".to_owned(),
        );
    }
    if bytes == b"[]" {
        return Ok(0);
    }
    match count_plain(bytes) {
        Some(count) => Ok(count),
        None => count_strict(bytes),
    }
}

/// serde_json's verdict, through its full parser (not its skipping one, which lets
/// invalid UTF-8 inside strings, lone surrogate escapes such as `"\ud800"`,
/// out-of-range numbers such as `1e400` and nesting past its depth limit through),
/// with nothing allocated: strings are borrowed where they have no escapes, numbers
/// and strings dropped as soon as they are read.
pub(crate) fn count_strict(bytes: &[u8]) -> Result<usize, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let count = count_with(&mut deserializer).map_err(|err| err.to_string())?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(count)
}

/// The element count of `bytes` if they are certainly one JSON array that serde_json
/// accepts; `None` if not sure (which includes every invalid input).
///
/// What it is sure of: valid UTF-8 (checked first, for the whole buffer: outside
/// strings only ASCII is accepted, so that covers every string); strings with the
/// escapes `\" \\ \/ \b \f \n \r \t` (a `\u` escape may be a lone surrogate:
/// not sure); numbers of at most [`MAX_NUMBER_LEN`] bytes whose exponent, if any,
/// keeps them below 10^300 (so far from serde_json's range); nesting up to
/// [`MAX_PLAIN_DEPTH`] (serde_json allows 128).
pub(crate) fn count_plain(bytes: &[u8]) -> Option<usize> {
    std::str::from_utf8(bytes).ok()?;
    let mut scan = Scan { bytes, at: 0 };
    scan.skip_space();
    scan.eat(b'[')?;
    let count = scan.array(1)?;
    scan.skip_space();
    (scan.at == bytes.len()).then_some(count)
}

/// Containers nested deeper than this are left to serde_json (which allows 128).
const MAX_PLAIN_DEPTH: usize = 100;

/// Numbers longer than this are left to serde_json.
const MAX_NUMBER_LEN: usize = 300;

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    #[inline]
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// The elements of an array whose `[` was just read, up to its `]`.
    fn array(&mut self, depth: usize) -> Option<usize> {
        self.skip_space();
        if self.eat(b']').is_some() {
            return Some(0);
        }
        let mut count = 0;
        loop {
            self.value(depth)?;
            count += 1;
            self.skip_space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.skip_space();
                }
                b']' => {
                    self.at += 1;
                    return Some(count);
                }
                _ => return None,
            }
        }
    }

    /// The members of an object whose `{` was just read, up to its `}`.
    fn object(&mut self, depth: usize) -> Option<()> {
        self.skip_space();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            self.string()?;
            self.skip_space();
            self.eat(b':')?;
            self.skip_space();
            // Most values are strings: no dispatch for them.
            if self.eat(b'"').is_some() {
                self.string()?;
            } else {
                self.value(depth)?;
            }
            self.skip_space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.skip_space();
                }
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// One value, starting at the current byte (not whitespace).
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string()
            }
            b'{' if depth < MAX_PLAIN_DEPTH => {
                self.at += 1;
                self.object(depth + 1)
            }
            b'[' if depth < MAX_PLAIN_DEPTH => {
                self.at += 1;
                self.array(depth + 1).map(drop)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// The rest of a string whose `"` was just read, up to its closing `"`.
    fn string(&mut self) -> Option<()> {
        loop {
            // Eight bytes at a time, to the first one that ends the string, starts
            // an escape or is a control character.
            while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().ok()?);
                let special = string_specials(word);
                if special != 0 {
                    self.at += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                self.at += 8;
            }
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(()),
                b'\\' => match self.peek()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                    _ => return None,
                },
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// Skips a run of ASCII digits, eight bytes at a time; returns its length.
    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let others = non_digits(word);
            if others != 0 {
                self.at += (others.trailing_zeros() / 8) as usize;
                return self.at - start;
            }
            self.at += 8;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        let _ = self.eat(b'-');
        let integer_digits = match self.peek()? {
            b'0' => {
                self.at += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            let negative = match self.peek()? {
                b'-' => {
                    self.at += 1;
                    true
                }
                b'+' => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let exponent_start = self.at;
            let exponent_digits = self.digits();
            if exponent_digits == 0 || exponent_digits > 3 {
                return None;
            }
            let exponent: usize = std::str::from_utf8(&self.bytes[exponent_start..self.at])
                .ok()?
                .parse()
                .ok()?;
            if !negative && integer_digits + exponent > MAX_NUMBER_LEN {
                return None;
            }
        }
        (self.at - start <= MAX_NUMBER_LEN).then_some(())
    }
}

/// The high bit of each byte of `word` that is not an ASCII digit (exact).
fn non_digits(word: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Digits become 0..=9; `+ 0x76` sets the high bit of the 7-bit part of every
    // byte from 10 up, without carrying into the next byte.
    let offset = word ^ 0x3030_3030_3030_3030;
    ((offset & !HIGH).wrapping_add(0x7676_7676_7676_7676) | offset) & HIGH
}

/// The high bit of each byte of `word` (read little-endian) that is `"`, `\\` or
/// below 0x20, and maybe of bytes after the first such byte, never before it: the
/// lowest bit set marks the first special byte, and 0 means there is none.
fn string_specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |value: u64| value.wrapping_sub(ONES) & !value & HIGH;
    let quote = zero_bytes(word ^ (ONES * b'"' as u64));
    let backslash = zero_bytes(word ^ (ONES * b'\\' as u64));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}

/// Counts the elements of the array `deserializer` reads, each one read as
/// `serde_json::Value` would read it (any serde deserializer; the trailing bytes are
/// the caller's to check).
pub(crate) fn count_with<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    deserializer.deserialize_seq(Counter)
}

/// Counts the elements of an array, validating each one as [`Checked`].
struct Counter;

impl<'de> Visitor<'de> for Counter {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element::<Checked>()?.is_some() {
            count += 1;
        }
        Ok(count)
    }
}

/// Any JSON value, read the way `serde_json::Value` reads it (through
/// `deserialize_any`, so strings are checked as UTF-8 and their escapes decoded,
/// numbers parsed, depth counted) and then dropped.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::{count_array, count_plain, count_strict, non_digits, string_specials};

    #[test]
    fn counts_arrays_and_refuses_the_rest() {
        assert_eq!(count_array(b"[]"), Ok(0));
        assert_eq!(count_array(br#" [{"a":[1,2]}, 3, "x"] "#), Ok(3));
        assert!(count_array(b"{}")
            .unwrap_err()
            .contains("expected a JSON array"));
        assert!(count_array(b"[1,").is_err());
        assert!(count_array(b"[1] [2]").is_err());
    }

    #[test]
    fn no_bytes_are_not_a_batch() {
        let err = count_array(b"").unwrap_err();
        assert!(err.contains("no bytes"), "{err}");
        assert!(count_array(b" \n").is_err());
    }

    #[test]
    fn what_serde_json_skips_but_refuses_to_parse_is_refused() {
        // Each of these passes serde_json's `IgnoredAny`.
        for (bytes, why) in [
            (&b"[\"\xff\"]"[..], "invalid UTF-8 inside a string"),
            (b"[\"\xc3\"]", "a truncated UTF-8 sequence"),
            (b"[\"\\ud800\"]", "a lone leading surrogate"),
            (b"[\"\\udc00\"]", "a lone trailing surrogate"),
            (b"[{\"\\ud800x\": 1}]", "a lone surrogate in a key"),
            (b"[1e400]", "a number out of range"),
        ] {
            assert!(count_array(bytes).is_err(), "{why}: {bytes:?}");
            assert!(
                serde_json::from_slice::<serde_json::Value>(bytes).is_err(),
                "serde_json refuses {why}"
            );
        }
        let deep = format!("[{}{}]", "[".repeat(200), "]".repeat(200));
        assert!(
            count_array(deep.as_bytes()).is_err(),
            "nesting past the limit"
        );
        assert_eq!(count_array("[\"\\ud83d\\ude00 é\"]".as_bytes()), Ok(1));
    }

    #[test]
    fn plain_json_takes_the_fast_path() {
        for plain in [
            &br#"[{"id":1,"name":"\"\n\/\t","score":-0.5,"big":1e299,"tiny":2E-300}]"#[..],
            br#" [ [], {}, [[{"a":[true,false,null]}]] ] "#,
            "[\"é€😀\"]".as_bytes(),
        ] {
            assert!(count_plain(plain).is_some(), "{plain:?}");
            assert_eq!(count_plain(plain), count_strict(plain).ok(), "{plain:?}");
        }
        assert_eq!(
            count_plain(br#"[{"a":"\u00e9"}]"#),
            None,
            "`\\u` is serde_json's"
        );
        assert_eq!(
            count_plain(b"[1e300]"),
            None,
            "near the range is serde_json's"
        );
    }

    /// serde_json's own verdict: parses as a `Value`, and that value is an array.
    fn serde_json_verdict(bytes: &[u8]) -> Option<usize> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Array(records)) => Some(records.len()),
            _ => None,
        }
    }

    /// A small deterministic generator (xorshift64*), so that a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Valid documents to start from: the shape of data-processor's output, and the
    /// corners of the grammar.
    const SEEDS: &[&str] = &[
        r#"[{"active":false,"country":"DE","email":"user0@example.com","id":0,"name":"user 0","phone":"+1 555 0000 000","processed":true,"processed_at":1764489600000,"score":0.0},{"active":true,"country":"FR","email":"user1@example.com","id":1,"name":"user 1","phone":"+1 555 0001 001","processed":true,"processed_at":1764489600000,"score":0.14285714285714285}]"#,
        r#"[]"#,
        r#" [ 1 , -2.5e-3 , 1E+2 , 0 , -0 , 18446744073709551615 , -9223372036854775808 ] "#,
        r#"[null,true,false,"",{},[],[[]],{"":{}}]"#,
        r#"["\"\\\/\b\f\n\r\t","\u00e9\u20AC\ud83d\ude00","é€😀"]"#,
        r#"[{"a":[{"b":[{"c":[1,2,{"d":"e"}]}]}]}]"#,
        "[\n\t\r 1\n]\n",
    ];

    /// Pieces a mutation may insert: structure, escapes, numbers, bytes that are not
    /// UTF-8, and whitespace that JSON does not allow.
    const PIECES: &[&[u8]] = &[
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u",
        b"\\ud800",
        b"\\udc00",
        b"\\ud800\\udc00",
        b"\\ud800\\u0041",
        b"\\uD83D\\uDE00",
        b"\\x",
        b"1e400",
        b"-1e400",
        b"1e-400",
        b"1.",
        b".5",
        b"01",
        b"-",
        b"1e",
        b"1E+",
        b"0x1",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"NaN",
        b"Infinity",
        b"nul",
        b"true",
        b"null",
        b"\xff",
        b"\xc3",
        b"\xc3\xa9",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xf0\x9f\x98\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\x00",
        b"\x1f",
        b"\x7f",
        b"\x0c",
        b"\x0b",
        b" ",
        b"\n",
        b"\t",
        b"\r",
        b"\xc2\xa0",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];

    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(6) {
                0 if !bytes.is_empty() => {
                    let at = at.min(bytes.len() - 1);
                    bytes[at] = rng.next() as u8;
                }
                1 if !bytes.is_empty() => {
                    let end = (at + 1 + rng.below(4)).min(bytes.len());
                    bytes.drain(at.min(end)..end);
                }
                2 => {
                    let end = (at + rng.below(16)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    let to = rng.below(bytes.len() + 1);
                    bytes.splice(to..to, copy);
                }
                _ => {
                    let piece = PIECES[rng.below(PIECES.len())];
                    bytes.splice(at..at, piece.iter().copied());
                }
            }
        }
    }

    #[test]
    fn the_word_masks_find_the_first_byte_of_interest() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let interesting = [
            b'"', b'\\', 0x00, 0x1f, 0x20, b'0', b'9', b'/', b':', 0x7f, 0x80, 0xff,
        ];
        for _ in 0..100_000 {
            let mut bytes = rng.next().to_le_bytes();
            for byte in &mut bytes {
                if rng.below(2) == 0 {
                    *byte = interesting[rng.below(interesting.len())];
                }
            }
            let word = u64::from_le_bytes(bytes);
            let first = |mask: u64| (mask != 0).then(|| mask.trailing_zeros() as usize / 8);
            let special = bytes
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20);
            assert_eq!(first(string_specials(word)), special, "{bytes:?}");
            for (at, byte) in bytes.iter().enumerate() {
                let flagged = non_digits(word) >> (at * 8 + 7) & 1 == 1;
                assert_eq!(flagged, !byte.is_ascii_digit(), "{bytes:?}");
            }
        }
    }

    #[test]
    fn the_verdict_is_serde_jsons_on_mutated_documents() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        let deep = format!("[{}{}]", "[".repeat(126), "]".repeat(126));
        let too_deep = format!("[{}{}]", "[".repeat(127), "]".repeat(127));
        let mut seeds: Vec<&[u8]> = SEEDS.iter().map(|seed| seed.as_bytes()).collect();
        seeds.extend([deep.as_bytes(), too_deep.as_bytes()]);
        for round in 0..40_000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            if round >= seeds.len() {
                mutate(&mut rng, &mut bytes);
            }
            let expected = serde_json_verdict(&bytes);
            assert_eq!(
                count_array(&bytes).ok(),
                expected,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            if expected.is_some() {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both verdicts are well represented.
        assert!(
            accepted > 2_000 && refused > 2_000,
            "{accepted} accepted, {refused} refused"
        );
    }
}
