//! A reader of the protobuf wire format that borrows from the request bytes.
//!
//! It accepts and refuses exactly what prost accepts and refuses (the `wire_fuzz` target and
//! the tests in `traces_wire` check it): varints of at most ten bytes, field keys within
//! `u32` with a tag of at least 1, the six wire types, lengths within the message, groups
//! skipped with matching end tags, and prost's recursion limit of 100 nested messages.

use thiserror::Error;

/// prost's `RECURSION_LIMIT`: how deep messages (and skipped groups) may nest.
pub(crate) const RECURSION_LIMIT: u32 = 100;

/// Why bytes are not a valid message of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// A varint longer than ten bytes, past the end of the message, or beyond 64 bits.
    #[error("invalid varint")]
    InvalidVarint,
    /// A field key beyond 32 bits.
    #[error("invalid key value")]
    InvalidKey,
    /// A field tag of 0.
    #[error("invalid tag value: 0")]
    InvalidTag,
    /// Wire type 6 or 7.
    #[error("invalid wire type value")]
    InvalidWireType,
    /// A known field with the wrong wire type.
    #[error("invalid wire type for field {0}")]
    UnexpectedWireType(u32),
    /// A length or a fixed-size value past the end of its message.
    #[error("buffer underflow")]
    BufferUnderflow,
    /// An end-group tag without its start, or with another field number.
    #[error("unexpected end group tag")]
    UnexpectedEndGroup,
    /// Messages nested more than [`RECURSION_LIMIT`] deep.
    #[error("recursion limit reached")]
    RecursionLimit,
    /// A string field that is not UTF-8.
    #[error("invalid string value: data is not UTF-8 encoded")]
    InvalidUtf8,
}

/// The wire type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    SixtyFourBit,
    LengthDelimited,
    StartGroup,
    EndGroup,
    ThirtyTwoBit,
}

/// The fields of one message, read in order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    buf: &'a [u8],
    /// prost's recursion count for the fields of this message.
    depth: u32,
}

impl<'a> Message<'a> {
    /// The bytes not read yet: the whole message before its first field.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// A top-level message: the whole of `buf`.
    pub(crate) fn top(buf: &'a [u8]) -> Self {
        Self {
            buf,
            depth: RECURSION_LIMIT,
        }
    }

    /// What is left of the message: with the slice before a field, it bounds the field's bytes
    /// (key, length and value), for copying it as it is.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// The next field's tag and wire type; `None` at the end of the message.
    #[inline]
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, WireType)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        self.key().map(Some)
    }

    #[inline]
    fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let key = self.varint_raw()?;
        let key = u32::try_from(key).map_err(|_| WireError::InvalidKey)?;
        let wire_type = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::SixtyFourBit,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::ThirtyTwoBit,
            _ => return Err(WireError::InvalidWireType),
        };
        let tag = key >> 3;
        if tag == 0 {
            return Err(WireError::InvalidTag);
        }
        Ok((tag, wire_type))
    }

    #[inline]
    fn varint_raw(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (i * 7);
            if byte < 0x80 {
                if i == 9 && byte >= 0x02 {
                    return Err(WireError::InvalidVarint);
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(WireError::InvalidVarint)
    }

    fn expect(tag: u32, wire_type: WireType, expected: WireType) -> Result<(), WireError> {
        if wire_type == expected {
            Ok(())
        } else {
            Err(WireError::UnexpectedWireType(tag))
        }
    }

    /// A varint field (`int32`, `int64`, `uint32`, `bool`, an enum).
    #[inline]
    pub(crate) fn varint(&mut self, tag: u32, wire_type: WireType) -> Result<u64, WireError> {
        Self::expect(tag, wire_type, WireType::Varint)?;
        self.varint_raw()
    }

    /// A `fixed64` or `double` field.
    #[inline]
    pub(crate) fn fixed64(&mut self, tag: u32, wire_type: WireType) -> Result<u64, WireError> {
        Self::expect(tag, wire_type, WireType::SixtyFourBit)?;
        let (bytes, rest) = self
            .buf
            .split_first_chunk::<8>()
            .ok_or(WireError::BufferUnderflow)?;
        self.buf = rest;
        Ok(u64::from_le_bytes(*bytes))
    }

    /// A `fixed32` field.
    #[inline]
    pub(crate) fn fixed32(&mut self, tag: u32, wire_type: WireType) -> Result<u32, WireError> {
        Self::expect(tag, wire_type, WireType::ThirtyTwoBit)?;
        let (bytes, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(WireError::BufferUnderflow)?;
        self.buf = rest;
        Ok(u32::from_le_bytes(*bytes))
    }

    #[inline]
    fn delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint_raw()?;
        let len = usize::try_from(len).map_err(|_| WireError::BufferUnderflow)?;
        if len > self.buf.len() {
            return Err(WireError::BufferUnderflow);
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(bytes)
    }

    /// A `bytes` field.
    #[inline]
    pub(crate) fn bytes(&mut self, tag: u32, wire_type: WireType) -> Result<&'a [u8], WireError> {
        Self::expect(tag, wire_type, WireType::LengthDelimited)?;
        self.delimited()
    }

    /// A `string` field.
    #[inline]
    pub(crate) fn string(&mut self, tag: u32, wire_type: WireType) -> Result<&'a str, WireError> {
        let bytes = self.bytes(tag, wire_type)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8)
    }

    /// A message field: its own fields, one level deeper.
    #[inline]
    pub(crate) fn message(&mut self, tag: u32, wire_type: WireType) -> Result<Self, WireError> {
        Self::expect(tag, wire_type, WireType::LengthDelimited)?;
        if self.depth == 0 {
            return Err(WireError::RecursionLimit);
        }
        let buf = self.delimited()?;
        Ok(Self {
            buf,
            depth: self.depth - 1,
        })
    }

    /// Skips a field this reader does not know, as prost does.
    pub(crate) fn skip(&mut self, tag: u32, wire_type: WireType) -> Result<(), WireError> {
        self.skip_at(tag, wire_type, self.depth)
    }

    fn skip_at(&mut self, tag: u32, wire_type: WireType, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::RecursionLimit);
        }
        match wire_type {
            WireType::Varint => {
                self.varint_raw()?;
            }
            WireType::SixtyFourBit => {
                self.fixed64(tag, wire_type)?;
            }
            WireType::ThirtyTwoBit => {
                self.fixed32(tag, wire_type)?;
            }
            WireType::LengthDelimited => {
                self.delimited()?;
            }
            WireType::StartGroup => loop {
                let (inner_tag, inner_type) = self.key()?;
                if inner_type == WireType::EndGroup {
                    if inner_tag != tag {
                        return Err(WireError::UnexpectedEndGroup);
                    }
                    break;
                }
                self.skip_at(inner_tag, inner_type, depth - 1)?;
            },
            WireType::EndGroup => return Err(WireError::UnexpectedEndGroup),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Decodes `bytes` as a message whose every field is unknown, with prost and with the reader.
    fn both(bytes: &[u8]) -> (bool, bool) {
        let prost_ok = prost_types_empty(bytes);
        let mut message = Message::top(bytes);
        let ours = (|| {
            while let Some((tag, wire_type)) = message.next_field()? {
                message.skip(tag, wire_type)?;
            }
            Ok::<_, WireError>(())
        })();
        (prost_ok, ours.is_ok())
    }

    fn prost_types_empty(bytes: &[u8]) -> bool {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Empty {}
        Empty::decode(bytes).is_ok()
    }

    #[test]
    fn unknown_fields_as_prost() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "empty message"),
            (&[0x08, 0x01], "varint field"),
            (&[0x08], "varint missing"),
            (
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                "10-byte varint ending in 1",
            ),
            (
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "10-byte varint overflowing 64 bits",
            ),
            (
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0x00,
                ],
                "11-byte varint",
            ),
            (&[0x09, 1, 2, 3, 4, 5, 6, 7, 8], "fixed64"),
            (&[0x09, 1, 2, 3], "fixed64 cut short"),
            (&[0x0d, 1, 2, 3, 4], "fixed32"),
            (&[0x0a, 0x02, 0x61], "length past the end"),
            (&[0x0a, 0x01, 0x61], "length-delimited"),
            (&[0x0b, 0x08, 0x01, 0x0c], "group with a varint inside"),
            (
                &[0x0b, 0x08, 0x01, 0x14],
                "group closed by another field's end tag",
            ),
            (&[0x0c], "end group without a start"),
            (&[0x0e], "wire type 6"),
            (&[0x0f], "wire type 7"),
            (&[0x00], "tag 0"),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], "key beyond 32 bits"),
            (&[0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01], "largest key"),
        ];
        for (bytes, why) in cases {
            let (prost_ok, ours) = both(bytes);
            assert_eq!(ours, prost_ok, "{why}: prost {prost_ok}, reader {ours}");
        }
    }

    #[test]
    fn nested_groups_hit_the_recursion_limit_as_prost() {
        for depth in [98, 99, 100, 101] {
            let mut bytes = vec![0x0b; depth];
            bytes.extend(std::iter::repeat_n(0x0c, depth));
            let (prost_ok, ours) = both(&bytes);
            assert_eq!(ours, prost_ok, "groups nested {depth} deep");
        }
    }
}
