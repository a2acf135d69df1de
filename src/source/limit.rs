//! Record size limits that hold while reading: an oversized record is skipped as it streams by
//! (never buffered whole) and replaced by a marker record that the reader turns into a
//! malformed row, so one huge field cannot exhaust memory.

use std::io::{BufRead, Read};

/// First field of the record that stands for an oversized CSV record: bytes no CSV text
/// holds (a NUL and a SOH), the marker, then the record's size.
pub(crate) const OVERSIZED: &[u8] = b"\x00\x01conform:oversized:";

/// The record size of an [`OVERSIZED`] marker field, if it is one.
pub(crate) fn oversized(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field.strip_prefix(OVERSIZED)?)
        .ok()?
        .parse()
        .ok()
}

/// The message of an oversized record.
pub(crate) fn oversized_message(size: u64, limit: usize) -> String {
    format!(
        "the record is {size} bytes long, over the {limit}-byte limit (`limits.max_record_bytes`); its values are not kept"
    )
}

/// A CSV byte stream whose records are at most `limit` bytes; longer ones come out as one
/// [`OVERSIZED`] marker record. It follows RFC 4180 quoting as the `csv` crate does (a quote
/// opens only at a field's start; `""` inside quotes is a quote) to find record ends, jumping
/// between quotes and line breaks with `memchr` so that ordinary input passes at memory speed.
pub(crate) struct CsvLimit<R> {
    inner: R,
    lex: Lexer,
}

/// The record-finding state of a [`CsvLimit`].
struct Lexer {
    delimiter: u8,
    limit: usize,
    in_quotes: bool,
    /// The previous byte was a quote inside a quoted field: `""` or the closing quote.
    after_quote: bool,
    at_field_start: bool,
    /// The current record's bytes, held back until it ends or passes the limit.
    pending: Vec<u8>,
    /// Set while an oversized record is skipped: its size so far.
    skipping: Option<u64>,
    /// Bytes ready for the reader, from `pos` on.
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: BufRead> CsvLimit<R> {
    pub(crate) fn new(inner: R, delimiter: u8, limit: usize) -> Self {
        CsvLimit {
            inner,
            lex: Lexer::new(delimiter, limit),
        }
    }

    /// Reads input until some output is ready or the input ends.
    fn fill(&mut self) -> std::io::Result<()> {
        let lex = &mut self.lex;
        lex.out.clear();
        lex.pos = 0;
        while lex.out.is_empty() && !lex.done {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                lex.done = true;
                if lex.skipping.is_some() || !lex.pending.is_empty() {
                    lex.end_record();
                }
                break;
            }
            let n = chunk.len();
            lex.process(chunk);
            self.inner.consume(n);
        }
        Ok(())
    }
}

impl<R: BufRead> Read for CsvLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CsvLimit<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.lex.pos >= self.lex.out.len() {
            self.fill()?;
        }
        Ok(&self.lex.out[self.lex.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.lex.pos = (self.lex.pos + amt).min(self.lex.out.len());
    }
}

impl Lexer {
    fn new(delimiter: u8, limit: usize) -> Self {
        Lexer {
            delimiter,
            limit: limit.max(1),
            in_quotes: false,
            after_quote: false,
            at_field_start: true,
            pending: Vec::new(),
            skipping: None,
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let Some(last) = bytes.last() else {
            return;
        };
        self.at_field_start = *last == self.delimiter;
        match &mut self.skipping {
            Some(size) => *size += bytes.len() as u64,
            None => {
                self.pending.extend_from_slice(bytes);
                if self.pending.len() > self.limit {
                    self.skipping = Some(self.pending.len() as u64);
                    self.pending = Vec::new();
                }
            }
        }
    }

    /// Ends the current record (its terminator already taken).
    fn end_record(&mut self) {
        match self.skipping.take() {
            Some(size) => {
                self.out.extend_from_slice(OVERSIZED);
                self.out.extend_from_slice(size.to_string().as_bytes());
                self.out.push(b'\n');
            }
            None => self.out.extend_from_slice(&self.pending),
        }
        self.pending.clear();
        self.at_field_start = true;
        self.in_quotes = false;
        self.after_quote = false;
    }

    fn process(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            if self.in_quotes {
                if self.after_quote {
                    self.after_quote = false;
                    if chunk[i] == b'"' {
                        self.take(&chunk[i..=i]);
                        i += 1;
                    } else {
                        // The closing quote: this byte is read as outside quotes.
                        self.in_quotes = false;
                    }
                    continue;
                }
                match memchr::memchr(b'"', &chunk[i..]) {
                    Some(k) => {
                        self.take(&chunk[i..=i + k]);
                        i += k + 1;
                        self.after_quote = true;
                    }
                    None => {
                        self.take(&chunk[i..]);
                        i = chunk.len();
                    }
                }
                continue;
            }
            let rest = &chunk[i..];
            match memchr::memchr3(b'"', b'\n', b'\r', rest) {
                None => {
                    self.take(rest);
                    i = chunk.len();
                }
                Some(k) => {
                    let field_start = if k == 0 {
                        self.at_field_start
                    } else {
                        rest[k - 1] == self.delimiter
                    };
                    self.take(&rest[..=k]);
                    i += k + 1;
                    if rest[k] == b'"' {
                        self.in_quotes = field_start;
                    } else {
                        self.end_record();
                    }
                }
            }
        }
    }
}

/// Reads one line (through `\n`, which is removed with a trailing `\r`) into `buf`, keeping at
/// most `limit` bytes; returns the bytes consumed and the line's full length when it was longer.
pub(crate) fn read_line_limited(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<(usize, Option<u64>)> {
    let mut consumed = 0usize;
    let mut over: Option<u64> = None;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (take, end) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        match &mut over {
            Some(size) => *size += take as u64,
            None if buf.len() + take > limit.saturating_add(2) => {
                over = Some((buf.len() + take) as u64);
                *buf = Vec::new();
            }
            None => buf.extend_from_slice(&chunk[..take]),
        }
        reader.consume(take);
        consumed += take;
        if end {
            break;
        }
    }
    Ok((consumed, over))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(text: &[u8], limit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        CsvLimit::new(std::io::Cursor::new(text.to_vec()), b',', limit)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn short_records_pass_unchanged() {
        let text = b"a,b\r\n\"x\ny\",\"q\"\"q\"\n1,2";
        assert_eq!(through(text, 100), text.to_vec());
    }

    #[test]
    fn an_oversized_record_becomes_a_marker_and_the_next_ones_survive() {
        let big = "z".repeat(1000);
        let text = format!("a,b\n\"{big}\n{big}\",2\nc,d\n");
        let out = through(text.as_bytes(), 100);
        let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
        assert_eq!(lines[0], b"a,b");
        assert_eq!(oversized(lines[1]), Some(2006));
        assert_eq!(lines[2], b"c,d");
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_data() {
        // Were the quote to open a quoted field, the two lines would be one record over 8 bytes.
        let text = b"ab\"c,d\ne,f\n";
        assert_eq!(through(text, 8), text.to_vec());
    }

    #[test]
    fn long_lines_are_measured_not_kept() {
        let text = format!("{}\nshort\n", "x".repeat(5000));
        let mut r = std::io::Cursor::new(text.into_bytes());
        let mut buf = Vec::new();
        let (n, over) = read_line_limited(&mut r, &mut buf, 100).unwrap();
        assert_eq!((n, over), (5001, Some(5001)));
        assert!(buf.capacity() < 200, "the long line was not kept");
        buf.clear();
        let (n, over) = read_line_limited(&mut r, &mut buf, 100).unwrap();
        assert_eq!((n, over, buf.as_slice()), (6, None, b"short\n".as_slice()));
    }
}
