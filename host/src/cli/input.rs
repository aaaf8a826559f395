//! Records in: a JSON array, or JSON Lines (one object per line), streamed into
//! batches without reading the whole input into memory.
//!
//! A small scanner finds where each record ends (tracking strings and nesting), in a
//! buffer that holds one chunk of input plus the record being read; serde_json then
//! validates the record's bytes in place, and they are copied once, into the batch
//! being built. No record is turned into a tree. Batches go to a bounded channel, so
//! the reader is never more than a few batches ahead of the pipeline. Errors name the
//! line and column in the whole input, in serde_json's words (a column is never 0:
//! an input that ends too early is placed at its last character). Every record
//! must be a JSON object; the reader keeps the input line of each record of the
//! last few batches, so that a record a plugin refuses can be named by its number
//! and line in the input ([`Progress::locate`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{bounded, Receiver, Sender};
use plugbay_host::{Batch, IoError};
use serde::de::IgnoredAny;

/// Batches read ahead of the pipeline.
const READ_AHEAD: usize = 2;

/// Bytes read from the input at a time.
const CHUNK: usize = 1 << 16;

/// Batches whose records' input lines are kept: more than can be between the
/// reader and the first plugin (the read-ahead, the pipeline's queue, the batch in
/// the plugin).
const ORIGINS_KEPT: usize = 8;

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
    #[error("input {source_name} is not a JSON array or JSON Lines of objects: record {record} (input line {line}) is {found}; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line")]
    NotRecords {
        /// The input.
        source_name: String,
        /// 1-based record number.
        record: u64,
        /// 1-based line where the record starts.
        line: u64,
        /// What it is instead.
        found: &'static str,
    },
    /// The whole input is one JSON object over several lines: a document, not
    /// records (JSON Lines has one object per line).
    #[error("input {source_name} is one JSON object over lines {first_line} to {last_line}, not a list of records; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line")]
    LoneObject {
        /// The input.
        source_name: String,
        /// 1-based line where the object starts.
        first_line: u64,
        /// 1-based line where it ends.
        last_line: u64,
    },
}

/// What the reader has done so far (shared with the progress bar, the summary, and
/// the errors that name a record).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the input.
    pub bytes: AtomicU64,
    /// Records read.
    pub records: AtomicU64,
    /// The input is JSON Lines (not an array).
    pub json_lines: AtomicBool,
    /// The whole input has been read.
    pub finished: AtomicBool,
    /// Where the records of the last few batches came from.
    origins: Mutex<VecDeque<Origin>>,
}

/// Where a record of the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Its number in the input, from 1.
    pub record: u64,
    /// The input line it starts on, from 1.
    pub line: u64,
}

impl Progress {
    /// Where record `record` (from 1) of batch `batch` (from 0) came from, while the
    /// batch is among the last few read.
    pub fn locate(&self, batch: u64, record: u64) -> Option<Located> {
        let origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = origins.iter().find(|origin| origin.batch == batch)?;
        let index = record.checked_sub(1)?;
        Some(Located {
            record: origin.first_record + index,
            line: origin.lines.get(index)?,
        })
    }

    /// The first and last record (from 1) of batch `batch`, while it is among the
    /// last few read.
    pub fn records_of(&self, batch: u64) -> Option<(u64, u64)> {
        let origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = origins.iter().find(|origin| origin.batch == batch)?;
        Some((
            origin.first_record,
            origin.first_record + origin.lines.len().saturating_sub(1),
        ))
    }

    fn keep(&self, origin: Origin) {
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        if origins.len() == ORIGINS_KEPT {
            origins.pop_front();
        }
        origins.push_back(origin);
    }
}

/// The records of one batch: the first one's number and each one's input line.
#[derive(Debug)]
struct Origin {
    batch: u64,
    first_record: u64,
    lines: Lines,
}

/// The input lines of a batch's records, as runs of evenly spaced lines: one run
/// for JSON Lines or an array with one record per line (or all on one line), so a
/// batch of a million records costs a few bytes, not eight megabytes.
#[derive(Debug, Default)]
struct Lines {
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    /// The index of the run's first record in the batch.
    first: u64,
    /// Records in the run.
    count: u64,
    /// The first record's line.
    line: u64,
    /// Lines from one record of the run to the next.
    step: u64,
}

impl Lines {
    fn push(&mut self, index: u64, line: u64) {
        if let Some(run) = self.runs.last_mut() {
            if run.count == 1 && line >= run.line {
                run.step = line - run.line;
                run.count = 2;
                return;
            }
            if run.line + run.step * run.count == line {
                run.count += 1;
                return;
            }
        }
        self.runs.push(Run {
            first: index,
            count: 1,
            line,
            step: 0,
        });
    }

    fn get(&self, index: u64) -> Option<u64> {
        let at = self.runs.partition_point(|run| run.first <= index);
        let run = self.runs.get(at.checked_sub(1)?)?;
        (index < run.first + run.count).then(|| run.line + run.step * (index - run.first))
    }

    fn len(&self) -> u64 {
        self.runs.last().map_or(0, |run| run.first + run.count)
    }
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
            let mut batcher = Batcher::new(batch_size, tx.clone(), progress.clone());
            match read(Scanner::new(counted, CHUNK), &thread_name, &mut batcher) {
                Ok(()) => {
                    batcher.flush();
                    progress.finished.store(true, Ordering::Relaxed);
                }
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
    // At the next character (after `peek`): its column counts from 1.
    let syntax = |scanner: &Scanner<R>, message: &str| InputError::Json {
        source_name: name.to_owned(),
        line: scanner.line,
        column: scanner.column + 1,
        message: message.to_owned(),
    };
    // At the end of the input: placed at its last character, never at column 0.
    let early_end = |scanner: &Scanner<R>| InputError::Json {
        source_name: name.to_owned(),
        line: scanner.last.0,
        column: scanner.last.1,
        message: "EOF while parsing a list".to_owned(),
    };
    let not_an_object = |record: u64, line: usize, bytes: &[u8]| -> Result<(), InputError> {
        if bytes[0] == b'{' {
            return Ok(());
        }
        Err(InputError::NotRecords {
            source_name: name.to_owned(),
            record,
            line: line as u64,
            found: json_kind(bytes[0]),
        })
    };
    let Some(first) = scanner.peek().map_err(read_error)? else {
        return Ok(());
    };
    if first != b'[' {
        // JSON Lines: objects one after the other.
        batcher.progress.json_lines.store(true, Ordering::Relaxed);
        for record in 1u64.. {
            if scanner.peek().map_err(read_error)?.is_none() {
                return Ok(());
            }
            let line = scanner.line;
            let len = scanner.record(name)?;
            let bytes = &scanner.buf[scanner.pos..scanner.pos + len];
            not_an_object(record, line, bytes)?;
            let (last_line, _) = scanner.last_character(len);
            if record == 1 && last_line > line {
                // One object over several lines, and nothing after it: a document
                // given where records were expected, not JSON Lines.
                let bytes = bytes.to_vec();
                scanner.advance(len);
                if scanner.peek().map_err(read_error)?.is_none() {
                    return Err(InputError::LoneObject {
                        source_name: name.to_owned(),
                        first_line: line as u64,
                        last_line: last_line as u64,
                    });
                }
                if !batcher.push(&bytes, line) {
                    return Ok(());
                }
                continue;
            }
            let more = batcher.push(bytes, line);
            scanner.advance(len);
            if !more {
                return Ok(());
            }
        }
        return Ok(());
    }
    scanner.advance(1);
    let mut first_element = true;
    for record in 1u64.. {
        match scanner.peek().map_err(read_error)? {
            None => return Err(early_end(&scanner)),
            Some(b']') => {
                if first_element {
                    scanner.advance(1);
                    break;
                }
                return Err(syntax(&scanner, "trailing comma"));
            }
            Some(_) => {}
        }
        let line = scanner.line;
        let len = scanner.record(name)?;
        let bytes = &scanner.buf[scanner.pos..scanner.pos + len];
        not_an_object(record, line, bytes)?;
        let more = batcher.push(bytes, line);
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
            Some(_) => return Err(syntax(&scanner, "expected `,` or `]`")),
            None => return Err(early_end(&scanner)),
        }
    }
    match scanner.peek().map_err(read_error)? {
        None => Ok(()),
        Some(_) => Err(syntax(&scanner, "trailing characters")),
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
    /// Line and column (from 1) of the last character consumed that is not
    /// whitespace: where an input that ends too early is said to end.
    last: (usize, usize),
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
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
            last: (1, 1),
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

    /// The line and column (from 1) of the last character of `buf[pos..pos + upto]`
    /// that is not whitespace, or of the last one before `pos` if there is none.
    fn last_character(&self, upto: usize) -> (usize, usize) {
        let bytes = &self.buf[self.pos..self.pos + upto];
        let Some(at) = bytes.iter().rposition(|&byte| !is_space(byte)) else {
            return self.last;
        };
        let before = &bytes[..at];
        match before.iter().rposition(|&byte| byte == b'\n') {
            Some(newline) => (
                self.line + before.iter().filter(|&&byte| byte == b'\n').count(),
                at - newline,
            ),
            None => (self.line, self.column + at + 1),
        }
    }

    /// Consumes `n` bytes, keeping count of lines and columns.
    fn advance(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.last = self.last_character(n);
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
        let len = end.unwrap_or(self.buf.len() - self.pos);
        let bytes = &self.buf[self.pos..self.pos + len];
        match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) if end.is_some() => Ok(bytes.len()),
            Ok(_) => {
                let (line, column) = self.last_character(len);
                Err(InputError::Json {
                    source_name: name.to_owned(),
                    line,
                    column,
                    message: "EOF while parsing a value".to_owned(),
                })
            }
            Err(err) => {
                let (line, column) = if err.is_eof() {
                    self.last_character(len)
                } else if err.column() == 0 {
                    // At a line's start: placed at the end of what came before.
                    let line_start = bytes
                        .iter()
                        .enumerate()
                        .filter(|(_, &byte)| byte == b'\n')
                        .nth(err.line().saturating_sub(2))
                        .map_or(0, |(at, _)| at + 1);
                    self.last_character(line_start)
                } else if err.line() <= 1 {
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
    /// The input lines of the batch's records.
    lines: Lines,
    /// Batches sent.
    batches: u64,
    tx: Sender<Result<Batch, IoError>>,
    progress: Arc<Progress>,
    /// The pipeline stopped listening.
    stopped: bool,
}

impl Batcher {
    fn new(
        batch_size: usize,
        tx: Sender<Result<Batch, IoError>>,
        progress: Arc<Progress>,
    ) -> Batcher {
        Batcher {
            batch_size,
            buffer: Vec::new(),
            count: 0,
            lines: Lines::default(),
            batches: 0,
            tx,
            progress,
            stopped: false,
        }
    }

    /// Adds a record that starts on input line `line`; returns false once nobody
    /// listens any more.
    fn push(&mut self, record: &[u8], line: usize) -> bool {
        self.buffer.push(if self.count == 0 { b'[' } else { b',' });
        self.buffer.extend_from_slice(record);
        self.lines.push(self.count as u64, line as u64);
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
        let first_record = self
            .progress
            .records
            .fetch_add(self.count as u64, Ordering::Relaxed)
            + 1;
        self.progress.keep(Origin {
            batch: self.batches,
            first_record,
            lines: std::mem::take(&mut self.lines),
        });
        self.batches += 1;
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
        let mut batcher = Batcher::new(batch_size, tx, Arc::new(Progress::default()));
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
        // A first record over several lines is fine when more follow, and one
        // object on one line is one record.
        assert_eq!(
            batches_of("{\"a\":\n 1}\n{\"a\": 2}", 1).unwrap(),
            vec!["[{\"a\":\n 1}]", r#"[{"a": 2}]"#]
        );
        assert_eq!(
            batches_of("{\"records\": [{\"a\": 1}]}\n", 5).unwrap(),
            vec![r#"[{"records": [{"a": 1}]}]"#]
        );
    }

    /// Reads `text` in batches of `batch_size`; returns the reader's progress.
    fn progress_of(text: &str, batch_size: usize) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut batcher = Batcher::new(batch_size, tx, progress.clone());
        read(Scanner::new(text.as_bytes(), 7), "in.json", &mut batcher).unwrap();
        batcher.flush();
        drop(batcher);
        assert!(rx.iter().all(|batch| batch.is_ok()));
        progress
    }

    #[test]
    fn every_record_of_the_last_batches_is_located_by_number_and_line() {
        let located = |record, line| Some(Located { record, line });
        // JSON Lines with a blank line and a record over two lines.
        let progress = progress_of("{\"a\":1}\n\n{\"a\":2}\n{\"a\":\n3}\n{\"a\":4}\n", 3);
        assert_eq!(progress.locate(0, 1), located(1, 1));
        assert_eq!(progress.locate(0, 2), located(2, 3));
        assert_eq!(progress.locate(0, 3), located(3, 4));
        assert_eq!(progress.locate(1, 1), located(4, 6));
        assert_eq!(progress.locate(1, 2), None);
        assert_eq!(progress.locate(2, 1), None);
        assert_eq!(progress.records_of(1), Some((4, 4)));
        assert!(progress.json_lines.load(Ordering::Relaxed));
        // A pretty-printed array: one record every four lines.
        let records: Vec<String> = (0..10)
            .map(|i| format!("  {{\n    \"i\": {i}\n  }}"))
            .collect();
        let text = format!("[\n{}\n]\n", records.join(",\n"));
        let progress = progress_of(&text, 4);
        assert_eq!(progress.locate(0, 1), located(1, 2));
        assert_eq!(progress.locate(1, 2), located(6, 17));
        assert_eq!(progress.locate(2, 2), located(10, 29));
        assert_eq!(progress.records_of(2), Some((9, 10)));
        assert!(!progress.json_lines.load(Ordering::Relaxed));
        // All on one line.
        let progress = progress_of(r#"[{"a":1},{"a":2},{"a":3}]"#, 10);
        assert_eq!(progress.locate(0, 3), located(3, 1));
        // Only the last few batches are kept.
        let progress = progress_of(&"{}\n".repeat(20), 1);
        assert_eq!(progress.locate(19, 1), located(20, 20));
        assert_eq!(progress.locate(0, 1), None);
    }

    #[test]
    fn lines_are_kept_as_runs() {
        let mut lines = Lines::default();
        for (index, line) in [1, 2, 3, 4, 10, 10, 10, 11, 13].iter().enumerate() {
            lines.push(index as u64, *line);
        }
        let all: Vec<u64> = (0..9).map(|index| lines.get(index).unwrap()).collect();
        assert_eq!(all, [1, 2, 3, 4, 10, 10, 10, 11, 13]);
        assert_eq!(lines.get(9), None);
        assert_eq!(lines.len(), 9);
        assert_eq!(lines.runs.len(), 3);
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
        assert_eq!(error("[{},]"), json(1, 5, "trailing comma"));
        assert_eq!(error("[{} {}]"), json(1, 5, "expected `,` or `]`"));
        assert_eq!(error("[{}] [{}]"), json(1, 6, "trailing characters"));
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
            "input in.json is not a JSON array or JSON Lines of objects: record 1 (input line 1) is a number"
        ));
        assert!(error("{\"a\":1}\n\"x\"\n").contains("record 2 (input line 2) is a string"));
        assert!(error("{\"a\":1}\n\n[1]\n").contains("record 2 (input line 3) is an array"));
        // Records are objects, in an array too.
        assert!(error("[1, 2]").contains("record 1 (input line 1) is a number"));
        assert!(error("[{},\n {},\n \"x\"]").contains("record 3 (input line 3) is a string"));
        assert!(error("[{}, null]").contains("record 2 (input line 1) is null"));
        // An input that ends too early is placed at its last character, never at
        // column 0.
        assert_eq!(
            error("[{\"a\": 1},\n"),
            json(1, 10, "EOF while parsing a list")
        );
        assert_eq!(
            error("[\n{\"a\": 1}\n\n\n"),
            json(2, 8, "EOF while parsing a list")
        );
        assert_eq!(error("[\n"), json(1, 1, "EOF while parsing a list"));
        assert_eq!(error("[{\"a\":\n"), json(1, 6, "EOF while parsing a value"));
        assert_eq!(
            error("[{\"a\": [1,\n  2\n"),
            json(2, 3, "EOF while parsing a list")
        );
        assert_eq!(
            error("{\"a\": 1,\n\n"),
            json(1, 8, "EOF while parsing an object")
        );
        for text in ["[{\"a\":\n", "[\n\n", "{\"a\":\n", "[{}, {\n\"b\": [\n"] {
            assert!(
                !error(text).contains("column 0"),
                "{text:?}: {}",
                error(text)
            );
        }
        // One object over several lines is a document, not records.
        assert_eq!(
            error("{\n  \"records\": [\n    {\"a\": 1}\n  ]\n}\n"),
            "input in.json is one JSON object over lines 1 to 5, not a list of records; give a JSON array of objects (`[{...}, ...]`) or one JSON object per line"
        );
    }
}
