//! Text as the detectors read it. A model reads `４１１１`, `4111\u{200B}1111` and `4111.1111`
//! as the digits they show, so the detectors must too: each character is brought to its
//! compatibility form (NFKC: fullwidth, superscript, circled and mathematical digits and
//! letters become plain ones), invisible characters are dropped (zero-width spaces and
//! joiners, soft hyphens, bidirectional controls, variation selectors), Unicode tag
//! characters (`U+E0041`, used to smuggle instructions past a reader) become the ASCII they
//! stand for, dash- and space-like separators become `-` and ` `, and `\uXXXX` escapes
//! written into a text (JSON inside a string, JSON an answer writes) become what they
//! encode.
//!
//! Each character is normalised on its own, so a text arriving in pieces (a stream) is
//! normalised piece by piece with the same result. Every normalised byte maps back to the
//! character it came from: a finding is redacted in the original text, and everything
//! around it is forwarded as the client or model wrote it. ASCII text is its own normal
//! form, and costs one check.

use std::borrow::Cow;
use std::ops::Range;

use unicode_normalization::UnicodeNormalization;

/// A text in normal form, and how its bytes map back to the original's.
#[derive(Debug)]
pub(crate) struct Normalized<'a> {
    text: Cow<'a, str>,
    /// For each original character (when the text is not its own normal form): where its
    /// normal form starts, and where the character starts in the original.
    units: Vec<(u32, u32)>,
    original_len: usize,
}

impl<'a> Normalized<'a> {
    pub(crate) fn new(original: &'a str) -> Self {
        if is_normal(original) {
            return Self {
                text: Cow::Borrowed(original),
                units: Vec::new(),
                original_len: original.len(),
            };
        }
        let mut text = String::with_capacity(original.len());
        let mut units = Vec::with_capacity(original.len());
        each_unit(original, |i, c| {
            units.push((text.len() as u32, i as u32));
            push_normal(c, &mut text);
        });
        Self {
            text: Cow::Owned(text),
            units,
            original_len: original.len(),
        }
    }

    /// The normal form.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Whether the normal form is the original text itself.
    #[cfg(test)]
    pub(crate) fn is_identity(&self) -> bool {
        self.units.is_empty()
    }

    /// The original range behind a range of the normal form: every character any of whose
    /// normal form it covers.
    pub(crate) fn original(&self, r: Range<usize>) -> Range<usize> {
        if self.units.is_empty() {
            return r;
        }
        let start = self
            .unit_at(r.start)
            .map_or(0, |u| self.units[u].1 as usize);
        let end = if r.end <= r.start {
            start
        } else {
            self.unit_at(r.end - 1).map_or(self.original_len, |u| {
                self.units
                    .get(u + 1)
                    .map_or(self.original_len, |n| n.1 as usize)
            })
        };
        start..end
    }

    /// The original offset of a normal-form offset at a unit boundary (or the original's end).
    #[cfg(test)]
    pub(crate) fn original_offset(&self, at: usize) -> usize {
        if self.units.is_empty() {
            return at;
        }
        if at >= self.text.len() {
            return self.original_len;
        }
        // The first unit whose normal form starts at or after `at`.
        let i = self.units.partition_point(|u| (u.0 as usize) < at);
        self.units
            .get(i)
            .map_or(self.original_len, |u| u.1 as usize)
    }

    /// The unit whose normal form holds byte `at`: the last that starts at or before it.
    fn unit_at(&self, at: usize) -> Option<usize> {
        let i = self.units.partition_point(|u| u.0 as usize <= at);
        i.checked_sub(1)
    }
}

/// Whether a text is its own normal form (ASCII without an escape): the common case, one
/// pass.
pub(crate) fn is_normal(s: &str) -> bool {
    s.is_ascii() && memchr::memchr(b'\\', s.as_bytes()).is_none()
}

/// Calls `unit(start, char)` for each unit of `s`: a character, or a `\uXXXX` escape (a
/// surrogate pair's two escapes together) standing for the character it encodes.
pub(crate) fn each_unit(s: &str, mut unit: impl FnMut(usize, char)) {
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\'
            && let Some((decoded, len)) = escape_at(&s[i..])
        {
            unit(i, decoded);
            // Skip the rest of the escape (ASCII: one char per byte).
            for _ in 1..len {
                chars.next();
            }
            continue;
        }
        unit(i, c);
    }
}

/// The character a `\uXXXX` escape (or a surrogate pair of them) at the start of `s`
/// encodes, and the escape's length.
fn escape_at(s: &str) -> Option<(char, usize)> {
    let hex = |at: usize| -> Option<u32> {
        let h = s.get(at..at + 4)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    };
    if !s.starts_with("\\u") {
        return None;
    }
    let unit = hex(2)?;
    if (0xD800..=0xDBFF).contains(&unit) {
        let low = s.get(6..8).filter(|p| *p == "\\u").and_then(|_| hex(8))?;
        if !(0xDC00..=0xDFFF).contains(&low) {
            return None;
        }
        let c = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
        return Some((c, 12));
    }
    Some((char::from_u32(unit)?, 6))
}

/// How many bytes at the end of `s` may be the start of an escape still arriving (a stream
/// holds them until the next piece says).
pub(crate) fn partial_escape(s: &str) -> usize {
    let b = s.as_bytes();
    let from = b.len().saturating_sub(12);
    let Some(i) = b[from..]
        .iter()
        .rposition(|&c| c == b'\\')
        .map(|i| from + i)
    else {
        return 0;
    };
    let tail = &s[i..];
    let hexes = |t: &[u8]| t.iter().all(u8::is_ascii_hexdigit);
    // `\`, `\u`, `\uX`, `\uXX`, `\uXXX`.
    let prefix = |t: &str| {
        let t = t.as_bytes();
        t.len() < 6 && t.get(1).is_none_or(|&u| u == b'u') && hexes(t.get(2..).unwrap_or(&[]))
    };
    // `\uD800` to `\uDBFF`: half of a pair.
    let high = |t: &str| {
        t.len() == 6
            && t.starts_with("\\u")
            && u32::from_str_radix(&t[2..], 16).is_ok_and(|u| (0xD800..=0xDBFF).contains(&u))
    };
    if prefix(tail) {
        return if i >= 6 && s.get(i - 6..i).is_some_and(high) {
            tail.len() + 6
        } else {
            tail.len()
        };
    }
    if high(tail) {
        return 6;
    }
    0
}

/// Appends the normal form of one character.
pub(crate) fn push_normal(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c);
        return;
    }
    let u = c as u32;
    match u {
        // Tag characters stand for the ASCII they shadow.
        0xE0020..=0xE007E => {
            if let Some(a) = char::from_u32(u - 0xE0000) {
                out.push(a);
            }
        }
        _ if invisible(u) => {}
        _ if let Some(d) = decimal_digit(u) => out.push(char::from(b'0' + d)),
        // Dash-like characters.
        0x2010..=0x2015 | 0x2212 | 0xFE58 | 0xFE63 | 0xFF0D => out.push('-'),
        _ => {
            for n in std::iter::once(c).nfkc() {
                // NFKC turns some spaces into U+0020 and leaves others: fold them all.
                if n.is_whitespace() && n != '\n' && n != '\r' && n != '\t' {
                    out.push(' ');
                } else {
                    out.push(n);
                }
            }
        }
    }
}

/// The first code point of each block of ten decimal digits (Unicode's `Nd`) that NFKC
/// leaves as they are: a model reads `٤١١١` as the digits it shows.
const DIGIT_ZEROS: &[u32] = &[
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of another script.
fn decimal_digit(u: u32) -> Option<u8> {
    let i = DIGIT_ZEROS.partition_point(|&z| z <= u).checked_sub(1)?;
    let d = u - DIGIT_ZEROS[i];
    (d < 10).then_some(d as u8)
}

/// Characters that render as nothing (Unicode's default-ignorable code points and
/// bidirectional controls), and enclosing marks (a keycap around a digit is the digit).
fn invisible(u: u32) -> bool {
    matches!(u,
        0x0488..=0x0489 | 0x20DD..=0x20E4 | 0xA670..=0xA672
        | 0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_its_own_normal_form() {
        let n = Normalized::new("card 4111 1111");
        assert!(n.is_identity());
        assert_eq!(n.original(5..9), 5..9);
    }

    #[test]
    fn lookalikes_become_what_they_show() {
        for (text, normal) in [
            ("４１１１ １１１１", "4111 1111"),
            ("4111\u{200B}1111\u{2060}", "41111111"),
            ("4111\u{00A0}1111\u{2009}2", "4111 1111 2"),
            ("4111\u{2011}1111\u{2212}1", "4111-1111-1"),
            ("𝟒𝟏𝟏𝟏 ①②", "4111 12"),
            ("ｉｇｎｏｒｅ", "ignore"),
            ("\u{E0069}\u{E0067}", "ig"),
            ("café ﬁle", "café file"),
            ("a\u{202E}b\u{FEFF}c", "abc"),
            ("٤١١١ ۱۲ ४५", "4111 12 45"),
            ("4\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}", "41"),
        ] {
            assert_eq!(Normalized::new(text).text(), normal, "{text:?}");
        }
    }

    #[test]
    fn ranges_map_back_to_the_characters_they_came_from() {
        let text = "x ４\u{200B}１ y";
        let n = Normalized::new(text);
        assert_eq!(n.text(), "x 41 y");
        let r = n.original(2..4);
        assert_eq!(&text[r], "４\u{200B}１");
        assert_eq!(n.original_offset(2), 2);
        assert_eq!(n.original_offset(n.text().len()), text.len());
        let lig = "a ﬁ b";
        let n = Normalized::new(lig);
        assert_eq!(n.text(), "a fi b");
        // Half of a ligature's normal form maps to the whole ligature.
        assert_eq!(&lig[n.original(2..3)], "ﬁ");
    }

    #[test]
    fn escapes_written_into_text_are_read() {
        let text = r"card 4111\u00201111\u0020\u0031111 and \ud83d\ude00 \u12";
        let n = Normalized::new(text);
        assert_eq!(n.text(), "card 4111 1111 1111 and 😀 \\u12");
        let r = n.original(5..19);
        assert_eq!(&text[r], r"4111\u00201111\u0020\u0031111");
    }

    #[test]
    fn a_stream_holds_an_escape_that_is_still_arriving() {
        for (s, n) in [
            ("ab", 0),
            ("ab\\", 1),
            ("ab\\u", 2),
            ("ab\\u00", 4),
            ("ab\\u003", 5),
            ("ab\\u0031", 0),
            ("ab\\ud83d", 6),
            ("ab\\ud83d\\u", 8),
            ("ab\\ud83d\\ude0", 11),
            ("ab\\ud83d\\ude00", 0),
            ("ab\\x", 0),
        ] {
            assert_eq!(partial_escape(s), n, "{s}");
        }
    }

    #[test]
    fn piecewise_normal_forms_equal_the_whole() {
        let text = "ａｂ\u{200B}c ４１ é";
        let whole = Normalized::new(text);
        let mut pieces = String::new();
        for c in text.chars() {
            push_normal(c, &mut pieces);
        }
        assert_eq!(whole.text(), pieces);
    }
}
