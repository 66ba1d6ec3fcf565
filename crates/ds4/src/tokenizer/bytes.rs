//! The GPT-2 byte ↔ character map of byte-level BPE (spec/serving.md §1.2).
//!
//! Bytes 33–126, 161–172 and 174–255 stand for themselves; the other 68 bytes map, in
//! increasing byte order, to U+0100, U+0101, …. Vocabulary strings are written in these
//! characters, so a token's bytes are its characters mapped back.

/// Whether byte `b` is one of the printable bytes that map to the same code point.
const fn is_identity(b: u8) -> bool {
    matches!(b, 33..=126 | 161..=172 | 174..=255)
}

/// `BYTE_TO_CHAR[b]` is the code point standing for byte `b`.
const BYTE_TO_CHAR: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut next_extra = 256u32;
    let mut b = 0usize;
    while b < 256 {
        table[b] = if is_identity(b as u8) {
            b as u32
        } else {
            let cp = next_extra;
            next_extra += 1;
            cp
        };
        b += 1;
    }
    table
};

/// Code points 0..324 back to their byte; `-1` where the code point stands for no byte.
const CHAR_TO_BYTE: [i16; 324] = {
    let mut table = [-1i16; 324];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    table
};

/// The character that byte `b` is written as in vocabulary strings.
pub(crate) fn byte_to_char(b: u8) -> char {
    // Every table entry is below 324, so it is a valid char.
    char::from_u32(BYTE_TO_CHAR[usize::from(b)]).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte that vocabulary character `c` stands for, if any.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let i = usize::try_from(u32::from(c)).ok()?;
    let b = *CHAR_TO_BYTE.get(i)?;
    u8::try_from(b).ok()
}

/// A token's bytes, as the HF ByteLevel decoder computes them: if every character of `text`
/// is in the byte map, the mapped bytes; otherwise `text`'s own UTF-8 bytes (this is how
/// added tokens such as `<｜User｜>` decode to themselves).
pub(crate) fn token_text_to_bytes(text: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = text.chars().map(char_to_byte).collect();
    mapped.unwrap_or_else(|| text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_its_324_code_points() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "byte {b} maps to a repeated char");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0), '\u{100}');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(char_to_byte('｜'), None);
    }

    #[test]
    fn token_with_unmapped_char_decodes_verbatim() {
        assert_eq!(token_text_to_bytes("ĠHello"), b" Hello");
        assert_eq!(token_text_to_bytes("<｜User｜>"), "<｜User｜>".as_bytes());
        assert_eq!(token_text_to_bytes("<think>"), b"<think>");
    }
}
