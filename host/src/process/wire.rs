//! The control channel between a host and its worker process: a unix socket pair
//! carrying frames, each a JSON header and an optional body of raw bytes.
//!
//! It carries the start (the host's setup, the worker's ready or failure) and the
//! host services the plugin calls (log, data store), which the host answers after
//! checking the plugin's permissions. Batches do not cross here: they go through
//! shared memory (see `shm`).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use plugbay_api::abi::LogLevel;
use serde::{Deserialize, Serialize};

/// The largest frame either side accepts (headers are small; bodies are data store
/// values).
const MAX_FRAME: u32 = 64 << 20;

/// What a request in shared memory asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum RequestKind {
    /// Run `process` on the batch in the data area.
    Process = 1,
    /// Run `cleanup`.
    Cleanup = 2,
    /// Drop the instance and exit.
    Stop = 3,
}

impl RequestKind {
    pub fn from_u32(value: u32) -> Option<RequestKind> {
        match value {
            1 => Some(RequestKind::Process),
            2 => Some(RequestKind::Cleanup),
            3 => Some(RequestKind::Stop),
            _ => None,
        }
    }
}

/// What a reply in shared memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ReplyKind {
    /// The data area holds the batch `process` returned.
    Batch = 1,
    /// The data area holds a [`PluginErrorWire`] as JSON.
    Error = 2,
    /// The hook (cleanup) returned without error; no data.
    Done = 3,
}

impl ReplyKind {
    pub fn from_u32(value: u32) -> Option<ReplyKind> {
        match value {
            1 => Some(ReplyKind::Batch),
            2 => Some(ReplyKind::Error),
            3 => Some(ReplyKind::Done),
            _ => None,
        }
    }
}

/// A plugin's error, as it crosses the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PluginErrorWire {
    pub kind: u32,
    pub message: String,
}

/// A message on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Host → worker, first: what to load and how to confine it.
    Setup(Box<super::Setup>),
    /// Worker → host: the instance is initialized.
    Ready {
        api_version: String,
        confinement: crate::sandbox::Confinement,
        namespaces: Vec<String>,
        /// The embedded manifest, when the worker was asked only to inspect.
        manifest: Option<String>,
    },
    /// Worker → host: the instance did not start.
    Failed {
        stage: String,
        message: String,
        plugin_error: Option<PluginErrorWire>,
    },
    /// Worker → host: a log line from the plugin, from the module `target` (empty
    /// for the plugin's own `Context::log`).
    Log {
        level: u8,
        #[serde(default)]
        target: String,
        message: String,
    },
    /// Worker → host: a data store read (the reply is `Value`).
    StoreGet { key: String },
    /// Worker → host: a data store write, the value in the body (the reply is `Done`).
    StorePut { key: String },
    /// Worker → host: a data store removal (the reply is `Removed`).
    StoreDelete { key: String },
    /// Host → worker: the value read, in the body, if any.
    Value { found: bool },
    /// Host → worker: a write went through.
    Done,
    /// Host → worker: whether a removed key was there.
    Removed { existed: bool },
    /// Host → worker: a service refused the call.
    Denied { error: PluginErrorWire },
}

/// The [`LogLevel`] a log message carries as its number (anything unknown reads as
/// an error, the most severe).
pub(crate) fn log_level(level: u8) -> LogLevel {
    match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

/// Writes one frame.
pub(crate) fn send(out: &mut impl Write, message: &Message, body: &[u8]) -> std::io::Result<()> {
    let header = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(8 + header.len() + body.len());
    frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(body);
    out.write_all(&frame)
}

/// Reads one frame; `None` at the end of the stream.
pub(crate) fn receive(input: &mut impl Read) -> std::io::Result<Option<(Message, Vec<u8>)>> {
    let mut lengths = [0u8; 8];
    match input.read_exact(&mut lengths) {
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let header_len = u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes"));
    let body_len = u32::from_le_bytes(lengths[4..].try_into().expect("4 bytes"));
    if header_len > MAX_FRAME || body_len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a control frame of {header_len} + {body_len} bytes is larger than {MAX_FRAME}"
        )));
    }
    let mut header = vec![0; header_len as usize];
    input.read_exact(&mut header)?;
    let mut body = vec![0; body_len as usize];
    input.read_exact(&mut body)?;
    let message = serde_json::from_slice(&header)
        .map_err(|err| std::io::Error::other(format!("a control frame is not valid: {err}")))?;
    Ok(Some((message, body)))
}

/// Sends one descriptor over the control socket (`SCM_RIGHTS`, with one byte), ahead
/// of any frame: the receiver takes it with [`receive_descriptor`] before it reads
/// frames.
pub(crate) fn send_descriptor(socket: impl AsFd, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other(
            "a descriptor does not fit its control message",
        ));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(b"D")],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != 1 {
        return Err(std::io::Error::other("a descriptor was not sent"));
    }
    Ok(())
}

/// Receives the descriptor [`send_descriptor`] sent (close-on-exec).
pub(crate) fn receive_descriptor(socket: impl AsFd) -> std::io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the control socket closed before a descriptor came",
        ));
    }
    let mut descriptors = control.drain().filter_map(|message| match message {
        RecvAncillaryMessage::ScmRights(fds) => Some(fds),
        _ => None,
    });
    descriptors
        .next()
        .and_then(|mut fds| fds.next())
        .ok_or_else(|| std::io::Error::other("a control message carried no descriptor"))
}

#[cfg(test)]
mod descriptor_tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_descriptor_crosses_the_socket_ahead_of_frames() {
        let (host, worker) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"sealed bytes").unwrap();
        send_descriptor(&host, file.as_fd()).unwrap();
        send(&mut &host, &Message::Done, b"").unwrap();
        let received = receive_descriptor(&worker).unwrap();
        let mut received = std::fs::File::from(received);
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "sealed bytes");
        assert!(matches!(
            receive(&mut &worker).unwrap(),
            Some((Message::Done, _))
        ));
    }

    #[test]
    fn a_closed_socket_gives_no_descriptor() {
        let (host, worker) = UnixStream::pair().unwrap();
        drop(host);
        let err = receive_descriptor(&worker).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
