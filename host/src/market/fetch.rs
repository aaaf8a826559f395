//! Downloading a plugin library from an `https://` or `http://` URL, within limits:
//! a largest size (checked against `Content-Length` first, then counted as the bytes
//! arrive), a deadline for the whole transfer, a bounded number of redirects, never
//! from `https` down to `http`, and no scheme but these two (`file:` and the rest are
//! refused before anything is fetched).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{client_tls, MarketError};
use crate::image::hex;

/// What a download may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// The largest body, in bytes.
    pub max_bytes: u64,
    /// The deadline for the whole transfer, redirects included.
    pub timeout: Duration,
    /// How many redirects are followed.
    pub max_redirects: usize,
}

impl Default for DownloadLimits {
    /// 256 MiB, 60 seconds, 5 redirects.
    fn default() -> DownloadLimits {
        DownloadLimits {
            max_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            max_redirects: 5,
        }
    }
}

/// A downloaded file.
#[derive(Debug, Clone)]
pub struct Download {
    /// Where it was written.
    pub path: PathBuf,
    /// The URL asked for.
    pub url: String,
    /// The URL it came from, after redirects.
    pub final_url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

/// Whether `text` is a URL this module downloads (`http://` or `https://`).
pub fn is_http_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Downloads `url` into the file `into` (which must not exist), within `limits`.
pub async fn download(
    url: &str,
    into: &Path,
    limits: DownloadLimits,
) -> Result<Download, MarketError> {
    let refused = |reason: String| MarketError::Download {
        url: url.to_owned(),
        reason,
    };
    let parsed =
        reqwest::Url::parse(url).map_err(|err| refused(format!("it is not a valid URL: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refused(format!(
            "`{}:` URLs are not downloaded; give an `https://` or `http://` URL",
            parsed.scheme()
        )));
    }
    let max_redirects = limits.max_redirects;
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            return attempt.error(format!("more than {max_redirects} redirects"));
        }
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|previous| previous.scheme() == "https");
        match attempt.url().scheme() {
            "https" => attempt.follow(),
            "http" if !from_https => attempt.follow(),
            "http" => attempt.error("a redirect from https to plain http"),
            other => {
                let message = format!("a redirect to a `{other}:` URL");
                attempt.error(message)
            }
        }
    });
    let client = client_tls(reqwest::Client::builder())
        .redirect(policy)
        .timeout(limits.timeout)
        .connect_timeout(limits.timeout.min(Duration::from_secs(15)))
        .build()
        .map_err(|err| refused(format!("cannot make an HTTP client: {err}")))?;
    let describe = |err: reqwest::Error| {
        if err.is_timeout() {
            refused(format!(
                "it did not finish within {} s",
                limits.timeout.as_secs_f64()
            ))
        } else if err.is_redirect() {
            refused(format!(
                "it redirected too far: {}",
                super::error_text(&err)
            ))
        } else {
            refused(super::error_text(&err))
        }
    };
    let response = client.get(parsed).send().await.map_err(describe)?;
    let final_url = response.url().to_string();
    let status = response.status();
    if !status.is_success() {
        return Err(refused(format!(
            "the server answered {status} (from {final_url})"
        )));
    }
    if let Some(length) = response.content_length() {
        if length > limits.max_bytes {
            return Err(refused(format!(
                "it is {length} bytes, more than the limit of {} bytes",
                limits.max_bytes
            )));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(into)
        .map_err(|err| refused(format!("cannot write {}: {err}", into.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(describe)?;
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            return Err(refused(format!(
                "it is more than the limit of {} bytes",
                limits.max_bytes
            )));
        }
        hasher.update(&chunk);
        std::io::Write::write_all(&mut file, &chunk)
            .map_err(|err| refused(format!("cannot write {}: {err}", into.display())))?;
    }
    file.sync_all()
        .map_err(|err| refused(format!("cannot write {}: {err}", into.display())))?;
    Ok(Download {
        path: into.to_owned(),
        url: url.to_owned(),
        final_url,
        size,
        sha256: hex(&hasher.finalize()),
    })
}
