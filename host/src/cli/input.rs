//! Records in: a JSON array, or JSON Lines (one object per line), streamed into
//! batches without reading the whole input into memory.
//!
//! A small scanner finds where each record ends (tracking strings and nesting), in a
//! buffer that holds one chunk of input plus the record being read; serde_json then
//! validates the record's bytes in place, and they are copied once, into the batch
//! being built. No record is turned into a tree. Batches go to a bounded channel, so
//! the reader is never more than a few batches ahead of the pipeline. Errors name the
//! line and column in the whole input, in serde_json's words.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use plugbay_host::{Batch, IoError};
use serde::de::IgnoredAny;

/// Batches read ahead of the pipeline.
const READ_AHEAD: usize = 2;

/// Bytes read from the input at a time.
const CHUNK: usize = 1 << 16;

/// Where records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Source {
    /// `-` is stdin, anything else a file.
    pub fn parse(text: &str) -> Source {
        if text == "-" {
            Source::Stdin
        } else {
            Source::File(PathBuf::from(text))
        }
    }

    /// The file's size, if it is a file.
    pub fn size(&self) -> Option<u64> {
        match self {
            Source::Stdin => None,
            Source::File(path) => std::fs::metadata(path).ok().map(|m| m.len()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Stdin => f.write_str("<stdin>"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why the input could not be read as records.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened.
    #[error("cannot open input {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read input {source_name}")]
    Read {
        /// The input.
        source_name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input is not valid JSON.
    #[error("invalid JSON in input {source_name} at line {line}, column {column}: {message}")]
    Json {
        /// The input.
        source_name: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The input is JSON, but not records.
    #[error("input {source_name} is not a JSON array or JSON Lines of objects: record {record} is {found}; give a JSON array (`[{{...}}, ...]`) or one JSON object per line")]
    NotRecords {
        /// The input.
        source_name: String,
        /// 1-based record number.
        record: u64,
        /// What it is instead.
        found: &'static str,
    },
}

/// What the reader has done so far (shared with the progress bar and the summary).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the input.
    pub bytes: AtomicU64,
    /// Records read.
    pub records: AtomicU64,
}

/// Starts reading `source` on its own thread; returns the batches (each at most
/// `batch_size` records) as they are read. The stream ends after the last batch, or
/// with one error. Dropping the receiver stops the reader.
pub fn read_batches(
    source: Source,
    batch_size: usize,
    progress: Arc<Progress>,
) -> Result<Receiver<Result<Batch, IoError>>, InputError> {
    let reader: Box<dyn Read + Send> = match &source {
        Source::Stdin => Box::new(io::stdin()),
        Source::File(path) => Box::new(File::open(path).map_err(|source| InputError::Open {
            path: path.clone(),
            source,
        })?),
    };
    let name = source.to_string();
    let thread_name = name.clone();
    let (tx, rx) = bounded(READ_AHEAD);
    std::thread::Builder::new()
        .name("plugbay-input".to_owned())
        .spawn(move || {
            let counted = Counted {
                inner: reader,
                progress: progress.clone(),
            };
            let mut batcher = Batcher {
                batch_size,
                buffer: Vec::new(),
                count: 0,
                tx: tx.clone(),
                progress,
                stopped: false,
            };
            match read(Scanner::new(counted, CHUNK), &thread_name, &mut batcher) {
                Ok(()) => batcher.flush(),
                Err(_) if batcher.stopped => {}
                Err(err) => {
                    let _ = tx.send(Err(Box::new(err)));
                }
            }
        })
        .map_err(|source| InputError::Read {
            source_name: name,
            source,
        })?;
    Ok(rx)
}

/// Reads every record into `batcher`: the elements of a top-level array, or a
/// sequence of objects (JSON Lines).
fn read<R: Read>(
    mut scanner: Scanner<R>,
    name: &str,
    batcher: &mut Batcher,
) -> Result<(), InputError> {
    let read_error = |source| InputError::Read {
        source_name: name.to_owned(),
        source,
    };
    let syntax = |scanner: &Scanner<R>, column: usize, message: &str| InputError::Json {
        source_name: name.to_owned(),
        line: scanner.line,
        column,
        message: message.to_owned(),
    };
    let Some(first) = scanner.peek().map_err(read_error)? else {
        return Ok(());
    };
    if first != b'[' {
        // JSON Lines: objects one after the other.
        for record in 1u64.. {
            if scanner.peek().map_err(read_error)?.is_none() {
                return Ok(());
            }
            let len = scanner.record(name)?;
            let bytes = &scanner.buf[scanner.pos..scanner.pos + len];
            if bytes[0] != b'{' {
                return Err(InputError::NotRecords {
                    source_name: name.to_owned(),
                    record,
                    found: json_kind(bytes[0]),
                });
            }
            let more = batcher.push(bytes);
            scanner.advance(len);
            if !more {
                return Ok(());
            }
        }
        return Ok(());
    }
    scanner.advance(1);
    let mut first_element = true;
    loop {
        match scanner.peek().map_err(read_error)? {
            None => return Err(syntax(&scanner, scanner.column, "EOF while parsing a list")),
            Some(b']') => {
                let column = scanner.column + 1;
                if first_element {
                    scanner.advance(1);
                    break;
                }
                return Err(syntax(&scanner, column, "trailing comma"));
            }
            Some(_) => {}
        }
        let len = scanner.record(name)?;
        let more = batcher.push(&scanner.buf[scanner.pos..scanner.pos + len]);
        scanner.advance(len);
        if !more {
            return Ok(());
        }
        first_element = false;
        match scanner.peek().map_err(read_error)? {
            Some(b',') => scanner.advance(1),
            Some(b']') => {
                scanner.advance(1);
                break;
            }
            Some(_) => {
                let column = scanner.column + 1;
                return Err(syntax(&scanner, column, "expected `,` or `]`"));
            }
            None => return Err(syntax(&scanner, scanner.column, "EOF while parsing a list")),
        }
    }
    match scanner.peek().map_err(read_error)? {
        None => Ok(()),
        Some(_) => {
            let column = scanner.column + 1;
            Err(syntax(&scanner, column, "trailing characters"))
        }
    }
}

fn json_kind(first: u8) -> &'static str {
    match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The input, buffered: `buf[pos..]` is what has not been consumed yet.
struct Scanner<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    chunk: usize,
    /// 1-based line of `buf[pos]`.
    line: usize,
    /// Bytes of that line before `buf[pos]`.
    column: usize,
}

impl<R: Read> Scanner<R> {
    fn new(reader: R, chunk: usize) -> Scanner<R> {
        Scanner {
            reader,
            buf: Vec::with_capacity(chunk),
            pos: 0,
            eof: false,
            chunk,
            line: 1,
            column: 0,
        }
    }

    /// Reads more input after what is buffered (dropping what was consumed); false
    /// at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + self.chunk, 0);
        loop {
            match self.reader.read(&mut self.buf[len..]) {
                Ok(read) => {
                    self.buf.truncate(len + read);
                    self.eof = read == 0;
                    return Ok(read > 0);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.buf.truncate(len);
                    return Err(err);
                }
            }
        }
    }

    /// Consumes `n` bytes, keeping count of lines and columns.
    fn advance(&mut self, n: usize) {
        let consumed = &self.buf[self.pos..self.pos + n];
        match consumed.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                self.line += consumed.iter().filter(|&&b| b == b'\n').count();
                self.column = n - last - 1;
            }
            None => self.column += n,
        }
        self.pos += n;
    }

    /// Skips whitespace; returns the next byte, or `None` at the end of the input.
    fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            let rest = &self.buf[self.pos..];
            match rest
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(at) => {
                    self.advance(at);
                    return Ok(Some(self.buf[self.pos]));
                }
                None => {
                    self.advance(rest.len());
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The length of the valid JSON value at `pos` (not whitespace), reading more
    /// input as needed; an error names what is wrong and where.
    fn record(&mut self, name: &str) -> Result<usize, InputError> {
        let end = self.value_end().map_err(|source| InputError::Read {
            source_name: name.to_owned(),
            source,
        })?;
        let bytes = &self.buf[self.pos..self.pos + end.unwrap_or(self.buf.len() - self.pos)];
        match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) if end.is_some() => Ok(bytes.len()),
            Ok(_) => Err(InputError::Json {
                source_name: name.to_owned(),
                line: self.line,
                column: self.column + bytes.len(),
                message: "EOF while parsing a value".to_owned(),
            }),
            Err(err) => {
                let (line, column) = if err.line() <= 1 {
                    (self.line, self.column + err.column())
                } else {
                    (self.line + err.line() - 1, err.column())
                };
                Err(InputError::Json {
                    source_name: name.to_owned(),
                    line,
                    column,
                    message: strip_position(&err.to_string()),
                })
            }
        }
    }

    /// Where the value at `pos` ends (relative to `pos`), by its brackets and
    /// strings; `None` if the input ends inside it. The value is not validated here.
    fn value_end(&mut self) -> io::Result<Option<usize>> {
        let first = self.buf[self.pos];
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let (mut at, mut depth, mut in_string, mut escaped) = (0usize, 0usize, false, false);
        loop {
            let bytes = &self.buf[self.pos..];
            while at < bytes.len() {
                let byte = bytes[at];
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                        if depth == 0 {
                            return Ok(Some(at + 1));
                        }
                    }
                } else if scalar {
                    if matches!(
                        byte,
                        b',' | b']' | b'}' | b'{' | b'[' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
                    ) {
                        return Ok(Some(at));
                    }
                } else {
                    match byte {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(Some(at + 1));
                            }
                        }
                        _ => {}
                    }
                }
                at += 1;
            }
            if !self.fill()? {
                return Ok((scalar && at > 0).then_some(at));
            }
        }
    }
}

/// Builds batches of raw JSON records and sends them on.
struct Batcher {
    batch_size: usize,
    buffer: Vec<u8>,
    count: usize,
    tx: Sender<Result<Batch, IoError>>,
    progress: Arc<Progress>,
    /// The pipeline stopped listening.
    stopped: bool,
}

impl Batcher {
    /// Adds a record; returns false once nobody listens any more.
    fn push(&mut self, record: &[u8]) -> bool {
        self.buffer.push(if self.count == 0 { b'[' } else { b',' });
        self.buffer.extend_from_slice(record);
        self.count += 1;
        if self.count >= self.batch_size {
            self.flush();
        }
        !self.stopped
    }

    /// Sends the records gathered so far as one batch.
    fn flush(&mut self) {
        if self.count == 0 || self.stopped {
            return;
        }
        self.buffer.push(b']');
        let bytes = std::mem::take(&mut self.buffer);
        self.progress
            .records
            .fetch_add(self.count as u64, Ordering::Relaxed);
        self.count = 0;
        if self.tx.send(Ok(Batch::from_json(bytes))).is_err() {
            self.stopped = true;
        }
    }
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.progress
            .bytes
            .fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads all of `text` as records, `chunk` bytes at a time: the batches' JSON,
    /// or the error.
    fn batches_in_chunks(
        text: &str,
        batch_size: usize,
        chunk: usize,
    ) -> Result<Vec<String>, String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut batcher = Batcher {
            batch_size,
            buffer: Vec::new(),
            count: 0,
            tx,
            progress: Arc::new(Progress::default()),
            stopped: false,
        };
        let scanner = Scanner::new(text.as_bytes(), chunk);
        read(scanner, "in.json", &mut batcher).map_err(|err| err.to_string())?;
        batcher.flush();
        drop(batcher);
        Ok(rx
            .iter()
            .map(|batch| String::from_utf8(batch.unwrap().as_bytes().to_vec()).unwrap())
            .collect())
    }

    /// The same, with every chunk size from 1 byte up: the result must not depend on
    /// where the reads split the input.
    fn batches_of(text: &str, batch_size: usize) -> Result<Vec<String>, String> {
        let whole = batches_in_chunks(text, batch_size, CHUNK);
        for chunk in 1..=text.len().min(40) {
            assert_eq!(
                batches_in_chunks(text, batch_size, chunk),
                whole,
                "reading {text:?} {chunk} bytes at a time"
            );
        }
        whole
    }

    #[test]
    fn arrays_stream_in_batches() {
        assert_eq!(
            batches_of(
                r#" [ {"a": 1}, {"b": [1, {"c": "]}\""}]} , {"c": "x"} ] "#,
                2
            )
            .unwrap(),
            vec![r#"[{"a": 1},{"b": [1, {"c": "]}\""}]}]"#, r#"[{"c": "x"}]"#]
        );
        assert_eq!(
            batches_of("[1, \"two\", true, null, [3], -4.5e1]", 10).unwrap(),
            vec![r#"[1,"two",true,null,[3],-4.5e1]"#]
        );
        assert_eq!(batches_of("[]", 2).unwrap(), Vec::<String>::new());
        assert_eq!(batches_of(" [\n] \n", 2).unwrap(), Vec::<String>::new());
        assert_eq!(batches_of("  \n", 2).unwrap(), Vec::<String>::new());
        assert_eq!(batches_of("", 2).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn json_lines_stream_in_batches() {
        assert_eq!(
            batches_of("{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":\n  3}\n", 2).unwrap(),
            vec![r#"[{"a":1},{"a":2}]"#, "[{\"a\":\n  3}]"]
        );
    }

    #[test]
    fn bad_input_names_what_is_wrong_and_where() {
        let error = |text: &str| batches_of(text, 10).unwrap_err();
        let json = |line: usize, column: usize, message: &str| {
            format!("invalid JSON in input in.json at line {line}, column {column}: {message}")
        };
        assert_eq!(
            error("[{\"a\": 1}, {\"a\": }]"),
            json(1, 18, "expected value")
        );
        assert_eq!(error("[{\"a\": 1}"), json(1, 9, "EOF while parsing a list"));
        assert_eq!(
            error("[{\"a\": 1},"),
            json(1, 10, "EOF while parsing a list")
        );
        assert_eq!(error("[1,]"), json(1, 4, "trailing comma"));
        assert_eq!(error("[1 2]"), json(1, 4, "expected `,` or `]`"));
        assert_eq!(error("[1] [2]"), json(1, 5, "trailing characters"));
        assert_eq!(
            error("[\n  {\"a\": \"x\"},\n  {\"a\": \"unterminated}\n]\n"),
            json(
                3,
                22,
                "control character (\\u0000-\\u001F) found while parsing a string"
            )
        );
        assert_eq!(
            error("[{\"a\": \"x"),
            json(1, 9, "EOF while parsing a string")
        );
        assert_eq!(
            error("[{\"a\": [1, 2"),
            json(1, 12, "EOF while parsing a list")
        );
        assert_eq!(
            error("[\n  {\"a\": 1,\n   \"b\": tru}\n]"),
            json(3, 12, "expected ident")
        );
        assert_eq!(
            error("{\"a\":1}\n{oops}\n"),
            json(2, 2, "key must be a string")
        );
        assert_eq!(error("{\"a\":1}\nhello\n"), json(2, 1, "expected value"));
        assert!(error("42").starts_with(
            "input in.json is not a JSON array or JSON Lines of objects: record 1 is a number"
        ));
        assert!(error("{\"a\":1}\n\"x\"\n").contains("record 2 is a string"));
        assert!(error("{\"a\":1}\n[1]\n").contains("record 2 is an array"));
    }
}
