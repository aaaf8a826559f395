//! Connections: the accept loop, and a guard in front of hyper on every connection.
//!
//! hyper parses each request and drives the router, but on its own it would wait
//! forever for a request head sent one byte at a time, keep idle connections open
//! without end, answer a malformed head with an empty body, and keep a shutdown
//! waiting for a client that never finishes its head. So every connection reads
//! through a [`Guard`], which frames the byte stream into requests (heads and
//! bodies, the way hyper will) and, before hyper sees any byte of a head:
//!
//! 1. gives the client [`Limits::idle_timeout`] to start a request, on a new
//!    connection and between requests (but not while one is being answered), then
//!    closes the connection;
//! 2. gives it [`Limits::header_timeout`] from the head's first byte to its end, else
//!    answers 408 `header_timeout`;
//! 3. checks the head: 400 `bad_request` for anything hyper would refuse (a garbage
//!    request line, a header that does not parse, a bad `Content-Length` or
//!    `Transfer-Encoding`), 414 `uri_too_long`, 431 `headers_too_large`, 505 for
//!    another HTTP version; each a JSON body, as every error of the API is, written
//!    by the guard after hyper has finished the responses before it.
//!
//! Only a complete head that passes is handed to hyper. Bodies pass through,
//! counted (by `Content-Length`, or by their chunks), so that the guard knows where
//! the next head starts.
//!
//! The accept loop holds at most [`Limits::max_connections`] connections; the next
//! one is answered 503 `too_many_connections` and closed, so the server never runs
//! out of descriptors and always answers. On shutdown it stops accepting, closes at
//! once every connection that is not answering a request (a half-sent head gets
//! 503 `shutting_down`), lets the others finish their request, and waits for them at
//! most [`Limits::shutdown_grace`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::error::{ApiError, ErrorCode};

/// How long a request's first byte may keep a connection waiting, unless told
/// otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request head may take from its first byte to its end, unless told
/// otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections are served at once, unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The longest request line (method, target and version); longer gets 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The largest request head; larger gets 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields in a head (hyper's limit); more gets 431.
pub const MAX_HEADERS: usize = 100;

/// Connections over the limit being answered 503 at once; beyond these, a
/// connection over the limit is closed without an answer.
const MAX_REFUSING: usize = 64;

/// How long a refused or failed connection is read from, after its answer, so that
/// closing it does not reset the connection before the client reads the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// How much is read then, at most.
const LINGER_BYTES: usize = 1 << 20;

/// How long writing an answer of the guard's own may take.
const ANSWER_TIME: Duration = Duration::from_secs(2);

/// Bytes read from the socket at a time while a head is read.
const READ_CHUNK: usize = 4096;

/// The longest chunk-size line (size, extensions) or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// What the connections may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From the end of a request (or the accept) to the next request's first byte.
    pub idle_timeout: Duration,
    /// From a head's first byte to its end.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a shutdown waits for the requests in flight.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then shuts down as the
/// module says.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (stopping, stop) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (router, stop) = (router.clone(), stop.clone());
                            connections.spawn(async move {
                                serve_connection(stream, router, limits, stop).await;
                                drop(permit);
                            });
                        }
                        Err(_) => match refusing.clone().try_acquire_owned() {
                            Ok(permit) => {
                                tracing::warn!(limit = limits.max_connections, "connection limit reached; answering 503");
                                connections.spawn(async move {
                                    refuse(stream, limits.max_connections).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => drop(stream),
                        },
                    }
                }
                // The client gave up before the accept: nothing to do.
                Err(err) if is_connection_error(&err) => {}
                // Out of descriptors or memory: wait for connections to end rather
                // than spin.
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            grace = ?limits.shutdown_grace,
            "requests still running after the shutdown grace period; closing their connections"
        );
        connections.shutdown().await;
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let answer = answer(
        &ApiError::new(
            ErrorCode::TooManyConnections,
            format!("the server is serving as many connections as it allows ({limit}); retry in a moment"),
        ),
        Some(1),
        false,
    );
    let _ = tokio::time::timeout(ANSWER_TIME, stream.write_all(&answer)).await;
    linger(stream).await;
}

/// Closes the write side, then reads and drops what the client still sends, for
/// [`LINGER_TIME`] or [`LINGER_BYTES`] at most: closing a connection with unread
/// data resets it, and the client may then lose the answer it was sent.
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(ANSWER_TIME, stream.shutdown()).await;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut buffer = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// An answer of the guard's own: a JSON error body, then the connection closes.
fn answer(error: &ApiError, retry_after: Option<u64>, head_only: bool) -> Vec<u8> {
    let status = error.code.status();
    let body = error.body().to_string();
    let mut text = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(seconds) = retry_after {
        text.push_str(&format!("retry-after: {seconds}\r\n"));
    }
    text.push_str("\r\n");
    if !head_only {
        text.push_str(&body);
    }
    text.into_bytes()
}

/// Serves one connection until it ends, the server stops, or the guard closes it.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnectionState::default());
    let guard = Guard::new(stream, limits, state.clone());
    let service = Tracked {
        router,
        state: state.clone(),
    };
    let mut connection = hyper::server::conn::http1::Builder::new()
        // A client may close its sending side once its request is sent; the
        // answer still goes out.
        .half_close(true)
        .keep_alive(true)
        .serve_connection(TokioIo::new(guard), service);
    let mut stopping = *stop.borrow();
    let mut graceful = false;
    loop {
        if stopping && !graceful {
            if state.in_flight.load(Ordering::Acquire) == 0 {
                // Nothing is being answered: close now, whatever the client is
                // still sending.
                let guard = connection.into_parts().io.into_inner();
                guard.close_for_shutdown().await;
                return;
            }
            // Answer the request in flight, then close.
            Pin::new(&mut connection).graceful_shutdown();
            graceful = true;
        }
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            changed = stop.changed(), if !stopping => {
                stopping = changed.is_err() || *stop.borrow();
            }
        }
    }
    let guard = connection.into_parts().io.into_inner();
    guard.finish().await;
}

/// What a connection's requests are doing, shared by its guard and its service.
#[derive(Debug)]
struct ConnectionState {
    /// Requests whose answer has not been sent in full yet.
    in_flight: AtomicUsize,
    /// When the last answer was sent in full (or the connection accepted).
    last_done: Mutex<Instant>,
}

impl Default for ConnectionState {
    fn default() -> Self {
        ConnectionState {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }
}

impl ConnectionState {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn last_done(&self) -> Instant {
        *self
            .last_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request in flight, until its answer's body is dropped (sent, or abandoned).
#[derive(Debug)]
struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router, as hyper calls it, counting the requests in flight.
struct Tracked {
    router: Router,
    state: Arc<ConnectionState>,
}

type Answer = Response<TrackedBody>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.state.start();
        let router = self.router.clone();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(router, request.map(Body::new)).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// An answer's body, which ends its request's time in flight when dropped.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where the guard is in the stream of requests.
#[derive(Debug)]
enum Phase {
    /// Between requests: waiting for a head's first byte.
    Idle,
    /// Reading a head, since its first byte.
    Head { started: Instant },
    /// Handing a checked head to hyper (`head[..released]` handed already), then
    /// its body.
    Release { released: usize, body: Framing },
    /// Passing a body through.
    Body(Framing),
    /// The framing was lost (a malformed chunked body): everything passes through,
    /// and hyper, which refuses the body, ends the connection.
    Opaque,
    /// Nothing more is read: hyper sees the end of the stream.
    Closed,
}

/// How much body follows a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunks, until the last one and the trailers.
    Chunked(Chunk),
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line, this many bytes into it.
    Size(usize),
    /// In a chunk's data: this much is left.
    Data(u64),
    /// After a chunk's data: the line break that ends it (`seen_cr`).
    DataEnd(bool),
    /// In the trailers: this many bytes into the current line.
    Trailer(usize),
}

/// Reads a connection for hyper, request by request, as the module says.
struct Guard<S> {
    stream: S,
    limits: Limits,
    state: Arc<ConnectionState>,
    phase: Phase,
    /// A head being read, or being handed to hyper.
    head: Vec<u8>,
    /// Bytes read after a head or a body ended, not yet framed.
    pending: Vec<u8>,
    /// The chunk-size line being read (a chunked body).
    line: Vec<u8>,
    /// The timer of the idle or head timeout.
    timer: Option<Pin<Box<Sleep>>>,
    /// An answer of the guard's own, written when hyper is done.
    answer: Option<Vec<u8>>,
    /// The client closed its sending side.
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guard<S> {
    fn new(stream: S, limits: Limits, state: Arc<ConnectionState>) -> Guard<S> {
        Guard {
            stream,
            limits,
            state,
            phase: Phase::Idle,
            head: Vec::new(),
            pending: Vec::new(),
            line: Vec::new(),
            timer: None,
            answer: None,
            eof: false,
        }
    }

    /// Ends reading with an answer of the guard's own.
    fn refuse(&mut self, error: ApiError) {
        if error.code.status().is_server_error() {
            tracing::warn!(code = %error.code, message = %error.message, "request refused");
        } else {
            tracing::debug!(code = %error.code, message = %error.message, "request refused");
        }
        let head_only = self.head.starts_with(b"HEAD ");
        self.answer = Some(answer(&error, None, head_only));
        self.phase = Phase::Closed;
        self.head = Vec::new();
        self.pending = Vec::new();
    }

    /// When the current wait ends: the idle timeout counts only while no request
    /// is being answered.
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle if self.state.in_flight.load(Ordering::Acquire) == 0 => {
                Some(self.state.last_done() + self.limits.idle_timeout)
            }
            Phase::Head { started } => Some(started + self.limits.header_timeout),
            _ => None,
        }
    }

    /// Polls the timer of the current wait; true when it has run out.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline() else {
            self.timer = None;
            return false;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// What the current wait ran out on.
    fn time_out(&mut self) {
        self.timer = None;
        match self.phase {
            Phase::Head { .. } => {
                let timeout = self.limits.header_timeout;
                self.refuse(ApiError::new(
                    ErrorCode::HeaderTimeout,
                    format!("the request head did not arrive in full within {timeout:?}"),
                ));
            }
            _ => {
                tracing::debug!("closing an idle connection");
                self.phase = Phase::Closed;
            }
        }
    }

    /// Moves what was read after a body into the head being read, and checks the
    /// head once it is complete. True when the phase changed.
    fn take_head(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Head {
                started: Instant::now(),
            };
        }
        self.head.append(&mut self.pending);
        self.check_head()
    }

    /// Checks the head read so far; true when the phase changed.
    fn check_head(&mut self) -> bool {
        match check_head(&self.head) {
            Ok(None) => false,
            Ok(Some((len, body))) => {
                // What follows the head is the body, or the next request.
                self.pending = self.head.split_off(len);
                self.phase = Phase::Release { released: 0, body };
                true
            }
            Err(error) => {
                self.refuse(error);
                true
            }
        }
    }

    /// Reads from the socket into `pending` (a head) or `buf` (a body); `Ok(0)` at
    /// the end of the stream.
    fn poll_socket(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Frames body bytes at the start of `bytes`; returns how many belong to the
    /// body (the rest, if any, starts the next request).
    fn frame_body(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            let framing = match self.phase {
                Phase::Body(framing) => framing,
                _ => return used,
            };
            match framing {
                Framing::Length(left) => {
                    let take = left.min((bytes.len() - used) as u64);
                    used += take as usize;
                    self.phase = Phase::Body(Framing::Length(left - take));
                }
                Framing::Chunked(chunk) => {
                    let (taken, next) = self.frame_chunk(chunk, &bytes[used..]);
                    used += taken;
                    match next {
                        Some(next) => self.phase = Phase::Body(Framing::Chunked(next)),
                        None if matches!(self.phase, Phase::Opaque) => return bytes.len(),
                        None => self.phase = Phase::Body(Framing::Length(0)),
                    }
                }
            }
            if self.phase == Phase::Body(Framing::Length(0)) {
                self.end_of_request();
            }
        }
        used
    }

    /// Frames the bytes of a chunked body in `chunk`'s state; returns how many it
    /// took and the next state (`None`: the body ended, or the framing was lost).
    fn frame_chunk(&mut self, chunk: Chunk, bytes: &[u8]) -> (usize, Option<Chunk>) {
        match chunk {
            Chunk::Size(_) | Chunk::Trailer(_) => {
                let Some(at) = bytes.iter().position(|&byte| byte == b'\n') else {
                    self.line.extend_from_slice(bytes);
                    let len = self.line.len();
                    if len > MAX_CHUNK_LINE {
                        self.phase = Phase::Opaque;
                        return (bytes.len(), None);
                    }
                    return (
                        bytes.len(),
                        Some(match chunk {
                            Chunk::Size(_) => Chunk::Size(len),
                            _ => Chunk::Trailer(len),
                        }),
                    );
                };
                self.line.extend_from_slice(&bytes[..=at]);
                let line = std::mem::take(&mut self.line);
                let next = match chunk {
                    Chunk::Size(_) => match httparse::parse_chunk_size(&line) {
                        Ok(httparse::Status::Complete((_, 0))) => Some(Chunk::Trailer(0)),
                        Ok(httparse::Status::Complete((_, size))) => Some(Chunk::Data(size)),
                        _ => {
                            self.phase = Phase::Opaque;
                            None
                        }
                    },
                    // An empty line ends the trailers, and the body.
                    _ if line == b"\r\n" || line == b"\n" => None,
                    _ => Some(Chunk::Trailer(0)),
                };
                (at + 1, next)
            }
            Chunk::Data(left) => {
                let take = left.min(bytes.len() as u64);
                let next = if take == left {
                    Chunk::DataEnd(false)
                } else {
                    Chunk::Data(left - take)
                };
                (take as usize, Some(next))
            }
            Chunk::DataEnd(seen_cr) => match bytes[0] {
                b'\r' if !seen_cr => (1, Some(Chunk::DataEnd(true))),
                b'\n' => (1, Some(Chunk::Size(0))),
                _ => {
                    self.phase = Phase::Opaque;
                    (bytes.len(), None)
                }
            },
        }
    }

    /// A request was read in full: the next byte starts a new head.
    fn end_of_request(&mut self) {
        self.phase = Phase::Idle;
        self.timer = None;
    }

    /// Writes the guard's own answer, if any, and closes the connection (lingering
    /// after an answer, so that the client gets it).
    async fn finish(mut self) {
        let answer = self.answer.take();
        if let Some(answer) = &answer {
            let _ = tokio::time::timeout(ANSWER_TIME, self.stream.write_all(answer)).await;
        }
        let _ = tokio::time::timeout(ANSWER_TIME, self.stream.shutdown()).await;
        if answer.is_none() || self.eof {
            return;
        }
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut buffer = [0u8; 4096];
            let mut read = 0;
            while read < LINGER_BYTES {
                match self.stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
    }

    /// Closes a connection that answers no request when the server stops: a client
    /// in the middle of a head is told why.
    async fn close_for_shutdown(mut self) {
        if matches!(self.phase, Phase::Head { .. }) {
            self.refuse(ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; send the request again when it is back",
            ));
        }
        self.finish().await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Release { released, body } => {
                    let rest = &this.head[*released..];
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    *released += n;
                    if *released == this.head.len() {
                        let body = *body;
                        this.head.clear();
                        if this.head.capacity() > 2 * READ_CHUNK {
                            this.head = Vec::new();
                        }
                        match body {
                            Framing::Length(0) => this.end_of_request(),
                            body => this.phase = Phase::Body(body),
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Body(_) | Phase::Opaque => {
                    if !this.pending.is_empty() {
                        let pending = std::mem::take(&mut this.pending);
                        let limit = pending.len().min(buf.remaining());
                        let used = if matches!(this.phase, Phase::Opaque) {
                            limit
                        } else {
                            this.frame_body(&pending[..limit])
                        };
                        buf.put_slice(&pending[..used]);
                        this.pending = pending[used..].to_vec();
                        if used > 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    if this.eof {
                        return Poll::Ready(Ok(()));
                    }
                    // Straight into hyper's buffer; what follows the body goes back
                    // into `pending`.
                    let before = buf.filled().len();
                    let unfilled = buf.initialize_unfilled();
                    let n = ready!(this.poll_socket(cx, unfilled))?;
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let used = if matches!(this.phase, Phase::Opaque) {
                        n
                    } else {
                        this.frame_body(&unfilled[..n])
                    };
                    this.pending.extend_from_slice(&unfilled[used..n]);
                    buf.set_filled(before + used);
                    if used > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Phase::Idle | Phase::Head { .. } => {
                    if this.take_head() {
                        continue;
                    }
                    if this.eof {
                        // The client stopped sending: a half-sent head is dropped.
                        this.phase = Phase::Closed;
                        continue;
                    }
                    let mut chunk = [0u8; READ_CHUNK];
                    match this.poll_socket(cx, &mut chunk) {
                        Poll::Ready(Ok(0)) => continue,
                        Poll::Ready(Ok(n)) => {
                            this.pending.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                        Poll::Pending => {
                            if this.timed_out(cx) {
                                this.time_out();
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl PartialEq for Phase {
    fn eq(&self, other: &Phase) -> bool {
        match (self, other) {
            (Phase::Body(a), Phase::Body(b)) => a == b,
            (Phase::Idle, Phase::Idle) | (Phase::Closed, Phase::Closed) => true,
            (Phase::Opaque, Phase::Opaque) => true,
            _ => false,
        }
    }
}

/// Checks a request head as hyper will read it: `Ok(None)` while it is incomplete
/// (and within the limits), its length and body framing once it is complete, or the
/// answer that refuses it.
fn check_head(bytes: &[u8]) -> Result<Option<(usize, Framing)>, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::BadRequest, message);
    // Empty lines before a request are allowed (RFC 9112, 2.2), as hyper does.
    let start = bytes
        .iter()
        .position(|&byte| byte != b'\r' && byte != b'\n')
        .unwrap_or(bytes.len());
    let line_end = bytes[start..].iter().position(|&byte| byte == b'\n');
    let line_len = line_end.unwrap_or(bytes.len() - start);
    if line_len > MAX_REQUEST_LINE {
        return Err(ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request line is longer than this server accepts ({MAX_REQUEST_LINE} bytes); use a shorter path"),
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => return Err(headers_too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(ApiError::new(
                ErrorCode::VersionNotSupported,
                "this server speaks HTTP/1.1 (and HTTP/1.0) only",
            ))
        }
        Err(err) => {
            let what = match err {
                httparse::Error::HeaderName | httparse::Error::HeaderValue => "a header field",
                httparse::Error::NewLine => "a line ending",
                httparse::Error::Status | httparse::Error::Token if request.method.is_none() => {
                    "the method"
                }
                httparse::Error::Token => "the request target",
                _ => "the request line",
            };
            return Err(bad(format!(
                "malformed request: {what} does not parse as HTTP/1.1 ({err}); send `METHOD /path HTTP/1.1` and `Name: value` header lines"
            )));
        }
    };
    if len > MAX_HEAD {
        return Err(headers_too_large());
    }
    let method = request.method.unwrap_or_default();
    axum::http::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("malformed request: invalid method `{method}`")))?;
    let target = request.path.unwrap_or_default();
    target
        .parse::<axum::http::Uri>()
        .map_err(|err| bad(format!("malformed request: invalid request target ({err})")))?;
    let http_11 = request.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for header in request.headers.iter() {
        axum::http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
            bad(format!(
                "malformed request: invalid header name `{}`",
                header.name
            ))
        })?;
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http_11 {
                return Err(bad(
                    "malformed request: HTTP/1.0 has no `Transfer-Encoding`; send HTTP/1.1 or a `Content-Length`".to_owned(),
                ));
            }
            let value = String::from_utf8_lossy(header.value);
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = header.value;
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok())
                .filter(|n| *n < u64::MAX - 1)
                .ok_or_else(|| {
                    bad(format!(
                        "malformed request: invalid `Content-Length` `{}`",
                        String::from_utf8_lossy(value)
                    ))
                })?;
            if length.is_some_and(|known| known != parsed) {
                return Err(bad(
                    "malformed request: `Content-Length` headers that disagree".to_owned(),
                ));
            }
            length = Some(parsed);
        }
    }
    let framing = match chunked {
        Some(true) => Framing::Chunked(Chunk::Size(0)),
        Some(false) => {
            return Err(bad(
                "malformed request: `Transfer-Encoding` must end with `chunked`".to_owned(),
            ))
        }
        None => Framing::Length(length.unwrap_or(0)),
    };
    Ok(Some((len, framing)))
}

fn headers_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::HeadersTooLarge,
        format!("the request head is larger than this server accepts ({MAX_HEAD} bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(head: impl AsRef<[u8]>) -> (u16, &'static str) {
        let error = check_head(head.as_ref()).unwrap_err();
        (error.code.status().as_u16(), error.code.as_str())
    }

    #[test]
    fn heads_are_checked_as_hyper_reads_them() {
        let ok = |head: &str| check_head(head.as_bytes()).unwrap();
        assert_eq!(
            ok("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some((33, Framing::Length(0)))
        );
        assert_eq!(ok("GET /health HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            ok("\r\nGET / HTTP/1.0\r\n\r\n"),
            Some((20, Framing::Length(0)))
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"),
            Some((57, Framing::Length(5)))
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n"),
            Some((72, Framing::Chunked(Chunk::Size(0))))
        );
        assert_eq!(refused("GARBAGE\r\n\r\n"), (400, "bad_request"));
        assert_eq!(
            refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            (400, "bad_request")
        );
        assert_eq!(
            refused("GET / HTTP/2.0\r\n\r\n"),
            (505, "http_version_not_supported")
        );
        assert_eq!(
            refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            (505, "http_version_not_supported")
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(refused("GET /\x7f HTTP/1.1\r\n\r\n"), (400, "bad_request"));
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (400, "bad_request")
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(refused(long), (414, "uri_too_long"));
        // Too long before the line even ends.
        assert_eq!(
            refused(format!("GET /{}", "a".repeat(MAX_REQUEST_LINE))),
            (414, "uri_too_long")
        );
        let big = format!(
            "GET / HTTP/1.1\r\n{}",
            "X-A: aaaaaaaaaaaaaaaa\r\n".repeat(MAX_HEAD / 20)
        );
        assert_eq!(refused(big), (431, "headers_too_large"));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: a\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(refused(many), (431, "headers_too_large"));
    }

    /// Frames `body` after a head with `framing`, in pieces of `piece` bytes;
    /// returns how many bytes belong to the body.
    fn body_length(framing: Framing, body: &[u8], piece: usize) -> (usize, bool) {
        let (client, _server) = tokio::io::duplex(64);
        let limits = Limits {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: 1,
            shutdown_grace: Duration::from_secs(1),
        };
        let mut guard = Guard::new(client, limits, Arc::new(ConnectionState::default()));
        guard.phase = Phase::Body(framing);
        let mut used = 0;
        for part in body.chunks(piece) {
            let n = guard.frame_body(part);
            used += n;
            if n < part.len() {
                break;
            }
        }
        (used, guard.phase == Phase::Idle)
    }

    #[test]
    fn bodies_are_framed_to_find_the_next_request() {
        let next = b"GET / HTTP/1.1\r\n\r\n";
        let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        for piece in 1..=chunked.len() + next.len() {
            let mut bytes = chunked.to_vec();
            bytes.extend_from_slice(next);
            assert_eq!(
                body_length(Framing::Chunked(Chunk::Size(0)), &bytes, piece),
                (chunked.len(), true),
                "{piece}-byte pieces"
            );
            let mut bytes = b"hello".to_vec();
            bytes.extend_from_slice(next);
            assert_eq!(body_length(Framing::Length(5), &bytes, piece), (5, true));
        }
        // A broken chunk passes through: hyper refuses it and closes.
        let (used, idle) = body_length(
            Framing::Chunked(Chunk::Size(0)),
            b"zz\r\nhello\r\n0\r\n\r\n",
            64,
        );
        assert_eq!((used, idle), (16, false));
    }
}
