//! Records in: a JSON array, or JSON Lines (one object per line), streamed into
//! batches without reading the whole input into memory.
//!
//! A top-level array is read element by element (serde's `SeqAccess` over a reader),
//! JSON Lines with serde_json's `StreamDeserializer`. Each record is copied as raw
//! JSON text into the batch being built; no record is turned into a tree. Batches go
//! to a bounded channel, so the reader is never more than a few batches ahead.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use plugbay_host::{Batch, IoError};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Batches read ahead of the pipeline.
const READ_AHEAD: usize = 2;

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
        /// What serde_json said.
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
            let name = source.to_string();
            match read(
                BufReader::with_capacity(1 << 16, counted),
                &name,
                &mut batcher,
            ) {
                Ok(()) => {
                    batcher.flush();
                }
                Err(_) if batcher.stopped => {}
                Err(err) => {
                    let _ = tx.send(Err(Box::new(err)));
                }
            }
        })
        .map_err(|source| InputError::Read {
            source_name: "input".to_owned(),
            source,
        })?;
    Ok(rx)
}

/// Reads `reader` into `batcher`: an array element by element, or JSON Lines.
fn read<R: BufRead>(mut reader: R, name: &str, batcher: &mut Batcher) -> Result<(), InputError> {
    let read_error = |source| InputError::Read {
        source_name: name.to_owned(),
        source,
    };
    let first = loop {
        let buffer = reader.fill_buf().map_err(read_error)?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => break buffer[at],
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    };
    let json_error = |err: serde_json::Error| -> InputError {
        if err.is_io() {
            return read_error(io::Error::from(
                err.io_error_kind().unwrap_or(io::ErrorKind::Other),
            ));
        }
        InputError::Json {
            source_name: name.to_owned(),
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        }
    };
    if first == b'[' {
        let mut deserializer = serde_json::Deserializer::from_reader(reader);
        let result = de::Deserializer::deserialize_seq(&mut deserializer, Elements { batcher });
        if batcher.stopped {
            return Ok(());
        }
        result.map_err(json_error)?;
        deserializer.end().map_err(json_error)?;
        return Ok(());
    }
    let stream = serde_json::Deserializer::from_reader(reader).into_iter::<Box<RawValue>>();
    for (index, record) in (1u64..).zip(stream) {
        let record = record.map_err(json_error)?;
        let text = record.get();
        if !text.starts_with('{') {
            return Err(InputError::NotRecords {
                source_name: name.to_owned(),
                record: index,
                found: json_kind(text),
            });
        }
        if !batcher.push(text) {
            return Ok(());
        }
    }
    Ok(())
}

fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
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
    fn push(&mut self, record: &str) -> bool {
        self.buffer.push(if self.count == 0 { b'[' } else { b',' });
        self.buffer.extend_from_slice(record.as_bytes());
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

/// The top-level array's elements, each handed to the batcher as raw JSON.
struct Elements<'a> {
    batcher: &'a mut Batcher,
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = seq.next_element_seed(RawRecord)? {
            if !self.batcher.push(record.get()) {
                return Err(de::Error::custom("the pipeline stopped reading"));
            }
        }
        Ok(())
    }
}

/// One element, as raw JSON text.
struct RawRecord;

impl<'de> DeserializeSeed<'de> for RawRecord {
    type Value = Box<RawValue>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(deserializer)
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

/// Reads all of `text` as records, for tests: the batches' JSON, or the error.
#[cfg(test)]
fn batches_of(text: &str, batch_size: usize) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.json");
    std::fs::write(&path, text).unwrap();
    let rx = read_batches(
        Source::File(path),
        batch_size,
        Arc::new(Progress::default()),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in rx {
        match batch {
            Ok(batch) => out.push(String::from_utf8(batch.as_bytes().to_vec()).unwrap()),
            Err(err) => {
                return Err(err
                    .to_string()
                    .replace(&*dir.path().to_string_lossy(), "DIR"))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_stream_in_batches() {
        assert_eq!(
            batches_of(r#" [ {"a": 1}, {"b": [1, 2]} , {"c": "x"} ] "#, 2).unwrap(),
            vec![r#"[{"a": 1},{"b": [1, 2]}]"#, r#"[{"c": "x"}]"#]
        );
        assert_eq!(batches_of("[]", 2).unwrap(), Vec::<String>::new());
        assert_eq!(batches_of("  \n", 2).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn json_lines_stream_in_batches() {
        assert_eq!(
            batches_of("{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n", 2).unwrap(),
            vec![r#"[{"a":1},{"a":2}]"#, r#"[{"a":3}]"#]
        );
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        assert_eq!(
            batches_of("[{\"a\": 1}, {\"a\": }]", 10).unwrap_err(),
            "invalid JSON in input DIR/input.json at line 1, column 18: expected value"
        );
        assert_eq!(
            batches_of("[{\"a\": 1}", 10).unwrap_err(),
            "invalid JSON in input DIR/input.json at line 1, column 9: EOF while parsing a list"
        );
        assert_eq!(
            batches_of("[1] [2]", 10).unwrap_err(),
            "invalid JSON in input DIR/input.json at line 1, column 5: trailing characters"
        );
        assert!(batches_of("42", 10).unwrap_err().starts_with(
            "input DIR/input.json is not a JSON array or JSON Lines of objects: record 1 is a number"
        ));
        assert!(batches_of("{\"a\":1}\n\"x\"\n", 10)
            .unwrap_err()
            .contains("record 2 is a string"));
        assert_eq!(
            batches_of("{\"a\":1}\n{oops}\n", 10).unwrap_err(),
            "invalid JSON in input DIR/input.json at line 2, column 2: key must be a string"
        );
    }
}
