//! The byte layouts of the batch calls in `wit/processor.wit`, written
//! and read in one place for both sides of the boundary: the host writes
//! records and reads outputs, the plugin SDK reads records and writes
//! outputs.
//!
//! - `handle-batch`'s `records`: messages back to back, each field in the
//!   order of the WIT `message`.
//! - `finished-encoded`'s outputs: outputs back to back, each field in the
//!   order of the WIT `output`.
//!
//! Little-endian throughout: a string or a `list<u8>` is its length (u32)
//! and its bytes, an option a tag byte (0 none, 1 some) and the value, the
//! headers a count (u32) and each name and value.
//!
//! The small functions are `#[inline]`: the host's release build has no
//! LTO, and these run per record and field.
//!
//! Reading borrows from the bytes and checks as it goes: `None` for
//! anything not in the layout (short, a bad tag, a name not UTF-8), never
//! a panic, since the bytes may come from a hostile guest.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// A message of `handle-batch`'s `records`, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Topic the record was consumed from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when it has one.
    pub timestamp: Option<i64>,
    /// Key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a null value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: Headers<'a>,
}

/// An output of `finished-encoded`, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef<'a> {
    /// Destination topic; `None` is the pipeline's default output topic.
    pub topic: Option<&'a str>,
    /// Key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a null value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: Headers<'a>,
}

/// Headers, in order: checked when read, then iterated over as
/// `(name, value)` pairs without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    /// The headers' part of the layout, after the count.
    bytes: &'a [u8],
    count: usize,
}

impl<'a> Headers<'a> {
    /// How many there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `(name, value)` pairs, in order.
    #[inline]
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            reader: Reader(self.bytes),
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = HeaderIter<'a>;

    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

/// The pairs of [`Headers`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        // Checked by `Reader::headers`: these cannot fail.
        Some((self.reader.string()?, self.reader.bytes()?))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

/// Where a record came from: the fields of a message before its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Topic the record was consumed from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when it has one.
    pub timestamp: Option<i64>,
}

/// Reads records or outputs from the front of its bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader of `bytes`.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// Whether everything has been read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next message of `handle-batch`'s `records`.
    #[inline]
    pub fn record(&mut self) -> Option<RecordRef<'a>> {
        Some(RecordRef {
            topic: self.string()?,
            partition: i32::from_le_bytes(self.take()?),
            offset: i64::from_le_bytes(self.take()?),
            timestamp: self.option(|r| r.take().map(i64::from_le_bytes))?,
            key: self.option(Self::bytes)?,
            value: self.option(Self::bytes)?,
            headers: self.headers()?,
        })
    }

    /// The next output of `finished-encoded`.
    #[inline]
    pub fn output(&mut self) -> Option<OutputRef<'a>> {
        Some(OutputRef {
            topic: self.option(Self::string)?,
            key: self.option(Self::bytes)?,
            value: self.option(Self::bytes)?,
            headers: self.headers()?,
        })
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    #[inline]
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take()?) as usize;
        let (bytes, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(bytes)
    }

    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.take::<1>()? {
            [0] => Some(None),
            [1] => read(self).map(Some),
            _ => None,
        }
    }

    /// Checks the headers (every name UTF-8, nothing short) without
    /// allocating, whatever count the bytes claim.
    #[inline]
    fn headers(&mut self) -> Option<Headers<'a>> {
        let count = u32::from_le_bytes(self.take()?) as usize;
        let start = self.0;
        for _ in 0..count {
            self.string()?;
            self.bytes()?;
        }
        Some(Headers {
            bytes: &start[..start.len() - self.0.len()],
            count,
        })
    }
}

/// Appends a message to `out` in `handle-batch`'s `records` layout.
///
/// # Panics
/// If a field is 4 GiB or longer (Kafka's sizes are i32, a guest's
/// memory is 32-bit: neither side has such a field).
pub fn write_record<'h>(
    out: &mut Vec<u8>,
    origin: Origin<'_>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) {
    write_bytes(out, origin.topic.as_bytes());
    out.extend_from_slice(&origin.partition.to_le_bytes());
    out.extend_from_slice(&origin.offset.to_le_bytes());
    match origin.timestamp {
        None => out.push(0),
        Some(timestamp) => {
            out.push(1);
            out.extend_from_slice(&timestamp.to_le_bytes());
        }
    }
    write_option(out, key);
    write_option(out, value);
    write_headers(out, headers);
}

/// Appends an output to `out` in `finished-encoded`'s layout.
///
/// # Panics
/// As [`write_record`].
pub fn write_output<'h>(
    out: &mut Vec<u8>,
    topic: Option<&str>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) {
    write_option(out, topic.map(str::as_bytes));
    write_option(out, key);
    write_option(out, value);
    write_headers(out, headers);
}

#[inline]
fn write_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("a field of the batch layout is under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

#[inline]
fn write_option(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            write_bytes(out, value);
        }
    }
}

fn write_headers<'h>(
    out: &mut Vec<u8>,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) {
    write_len(out, headers.len());
    for (name, value) in headers {
        write_bytes(out, name.as_bytes());
        write_bytes(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: [(&str, &[u8]); 2] = [("trace", b"t-1"), ("trace", b"")];

    fn records() -> Vec<u8> {
        let mut out = Vec::new();
        let origin = Origin {
            topic: "orders",
            partition: 3,
            offset: 1 << 40,
            timestamp: Some(-5),
        };
        write_record(&mut out, origin, Some(b"k"), None, HEADERS.into_iter());
        let origin = Origin {
            timestamp: None,
            ..origin
        };
        write_record(&mut out, origin, None, Some(b"\0v"), [].into_iter());
        out
    }

    #[test]
    fn records_read_back_as_written() {
        let bytes = records();
        let mut reader = Reader::new(&bytes);
        let first = reader.record().expect("in the layout");
        assert_eq!(
            first,
            RecordRef {
                topic: "orders",
                partition: 3,
                offset: 1 << 40,
                timestamp: Some(-5),
                key: Some(b"k"),
                value: None,
                headers: first.headers,
            }
        );
        assert_eq!(first.headers.iter().collect::<Vec<_>>(), HEADERS);
        let second = reader.record().expect("in the layout");
        assert_eq!((second.timestamp, second.key), (None, None));
        assert_eq!((second.value, second.headers.len()), (Some(&b"\0v"[..]), 0));
        assert!(reader.is_empty());
    }

    #[test]
    fn outputs_read_back_as_written() {
        let mut bytes = Vec::new();
        write_output(
            &mut bytes,
            Some("out"),
            None,
            Some(b"v"),
            HEADERS.into_iter(),
        );
        write_output(&mut bytes, None, Some(b""), None, [].into_iter());
        let mut reader = Reader::new(&bytes);
        let first = reader.output().expect("in the layout");
        assert_eq!(first.topic, Some("out"));
        assert_eq!((first.key, first.value), (None, Some(&b"v"[..])));
        assert_eq!(first.headers.iter().collect::<Vec<_>>(), HEADERS);
        let second = reader.output().expect("in the layout");
        assert_eq!((second.topic, second.key), (None, Some(&b""[..])));
        assert!(reader.is_empty());
    }

    #[test]
    fn bytes_not_in_the_layout_read_as_none() {
        let bytes = records();
        // Every cut short of the whole record, and a bad tag.
        let first_len = {
            let mut reader = Reader::new(&bytes);
            reader.record().expect("in the layout");
            bytes.len() - reader.0.len()
        };
        for cut in 0..first_len {
            assert_eq!(Reader::new(&bytes[..cut]).record(), None, "cut at {cut}");
        }
        let mut bad_tag = bytes.clone();
        bad_tag[4 + 6 + 4 + 8] = 2; // the timestamp's tag
        assert_eq!(Reader::new(&bad_tag).record(), None);
        // A header count far beyond the bytes allocates nothing.
        let mut huge = Vec::new();
        write_output(&mut huge, None, None, None, [].into_iter());
        let count = huge.len() - 4;
        huge[count..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Reader::new(&huge).output(), None);
        // A topic that is not UTF-8.
        let mut not_utf8 = Vec::new();
        write_output(&mut not_utf8, Some("é"), None, None, [].into_iter());
        not_utf8[6] = 0xff;
        assert_eq!(Reader::new(&not_utf8).output(), None);
    }
}
