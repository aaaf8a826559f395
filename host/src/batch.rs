//! Batches: a JSON array of records, as bytes, shared without copying.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use abi_stable::std_types::RVec;
use serde::de::DeserializeOwned;
use serde::Serialize;

mod check;

pub(crate) use check::count_array;

/// A batch of records: the bytes of a JSON array.
///
/// A batch is cheap to clone (it is shared, not copied), so a caller keeps its input
/// when a call fails and can retry it or route it elsewhere. A plugin's output stays
/// in the buffer it was written into (one the host lent the instance, or one the
/// plugin allocated) and is freed by the allocator that made it; a pipeline hands it
/// to the next plugin without parsing it.
#[derive(Clone)]
pub struct Batch {
    /// `None` for an empty array a plugin returned: the host validated it, frees the
    /// plugin's buffer at once and holds `[]` without an allocation.
    bytes: Option<Arc<Bytes>>,
    records: Option<usize>,
}

enum Bytes {
    Host(Vec<u8>),
    /// A plugin's output, in the buffer it was written into (freed by the allocator
    /// that made it), and the instance's [`Spare`] slot the buffer goes back to when
    /// the batch is dropped, for the instance's next output.
    Plugin(RVec<u8>, Option<Arc<Spare>>),
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Bytes::Plugin(bytes, Some(spare)) = self {
            spare.put(std::mem::take(bytes));
        }
    }
}

/// Output buffers larger than this are freed rather than kept for the next batch.
const MAX_KEPT: usize = 32 << 20;

/// Where a batch a plugin returned hands its buffer back when it is dropped, so that
/// the instance writes its next output there. Holds at most one buffer.
#[derive(Default)]
pub(crate) struct Spare(Mutex<Option<RVec<u8>>>);

impl Spare {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<RVec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `bytes` for the next output, if the slot is free and they are not too
    /// large to keep; else they are freed.
    fn put(&self, bytes: RVec<u8>) {
        if bytes.capacity() <= MAX_KEPT {
            let mut slot = self.slot();
            if slot.is_none() {
                *slot = Some(bytes);
            }
        }
    }
}

/// The buffers one instance writes its outputs into (`PluginInstance::process_into`):
/// one in hand, and the [`Spare`] slot where a returned batch gives its buffer back.
/// A caller that drops each output before the next call has the plugin write every
/// batch into the same buffer: no allocation, no page faults for fresh pages, and no
/// free on the caller's thread of a block the plugin's thread allocated.
#[derive(Default)]
pub(crate) struct Outputs {
    in_hand: Option<RVec<u8>>,
    spare: Arc<Spare>,
}

impl Outputs {
    /// An empty buffer for the next output: the one in hand, the one a dropped batch
    /// gave back, or a new one.
    pub(crate) fn take(&mut self) -> RVec<u8> {
        let mut bytes = match self.in_hand.take() {
            Some(bytes) => bytes,
            None => self.spare.slot().take().unwrap_or_default(),
        };
        bytes.clear();
        bytes
    }

    /// Keeps a buffer that no batch holds (after an empty output or a failure).
    pub(crate) fn keep(&mut self, bytes: RVec<u8>) {
        if bytes.capacity() <= MAX_KEPT {
            self.in_hand = Some(bytes);
        }
    }

    /// The batch for an output of `records` records that [`count_array`] checked: an
    /// empty one keeps the buffer in hand; any other holds the buffer until it is
    /// dropped, then gives it back.
    pub(crate) fn batch(&mut self, bytes: RVec<u8>, records: usize) -> Batch {
        if records == 0 {
            self.keep(bytes);
            return Batch {
                bytes: None,
                records: Some(0),
            };
        }
        Batch {
            bytes: Some(Arc::new(Bytes::Plugin(bytes, Some(self.spare.clone())))),
            records: Some(records),
        }
    }
}

impl Batch {
    /// A batch from the bytes of a JSON array. The bytes are not checked here: a
    /// plugin refuses a batch it cannot read.
    pub fn from_json(bytes: impl Into<Vec<u8>>) -> Batch {
        Batch {
            bytes: Some(Arc::new(Bytes::Host(bytes.into()))),
            records: None,
        }
    }

    /// A batch of `records`.
    ///
    /// # Examples
    ///
    /// ```
    /// use plugbay_host::Batch;
    /// let batch = Batch::from_records(&[serde_json::json!({"id": 1})])?;
    /// assert_eq!(batch.as_bytes(), br#"[{"id":1}]"#);
    /// assert_eq!(batch.len(), Some(1));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_records<T: Serialize>(records: &[T]) -> Result<Batch, serde_json::Error> {
        Ok(Batch {
            bytes: Some(Arc::new(Bytes::Host(serde_json::to_vec(records)?))),
            records: Some(records.len()),
        })
    }

    /// A plugin's output, which [`count_array`] found to be one JSON array of
    /// `records` records.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn from_plugin(bytes: RVec<u8>, records: usize) -> Batch {
        Batch {
            bytes: (records > 0).then(|| Arc::new(Bytes::Plugin(bytes, None))),
            records: Some(records),
        }
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self.bytes.as_deref() {
            None => b"[]",
            Some(Bytes::Host(bytes)) => bytes,
            Some(Bytes::Plugin(bytes, _)) => bytes.as_slice(),
        }
    }

    /// The number of records, when known (batches built from records, and every
    /// batch a plugin returned: the host validates and counts each one).
    pub fn len(&self) -> Option<usize> {
        self.records
    }

    /// Whether the batch is known to hold no records.
    pub fn is_empty(&self) -> bool {
        self.records == Some(0)
    }

    /// The records, parsed.
    pub fn records<T: DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        serde_json::from_slice(self.as_bytes())
    }

    /// The bytes between the array's brackets, trimmed (empty for an empty array):
    /// what to write when joining batches into one array.
    pub fn inner_json(&self) -> &[u8] {
        let bytes = self.as_bytes().trim_ascii();
        let inner = bytes
            .strip_prefix(b"[")
            .and_then(|rest| rest.strip_suffix(b"]"))
            .unwrap_or(bytes);
        inner.trim_ascii()
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("bytes", &self.as_bytes().len())
            .field("records", &self.records)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_array_from_a_plugin_is_held_without_its_buffer() {
        let batch = Batch::from_plugin(RVec::from(b" [ ] ".to_vec()), 0);
        assert_eq!(batch.as_bytes(), b"[]");
        assert_eq!(batch.len(), Some(0));
        assert!(batch.is_empty());
        let batch = Batch::from_plugin(RVec::from(b"[1]".to_vec()), 1);
        assert_eq!(batch.as_bytes(), b"[1]");
    }

    /// A plugin's output as `PluginInstance::process_into` writes it: into the
    /// buffer it is given.
    fn write(outputs: &mut Outputs, json: &[u8], records: usize) -> Batch {
        let mut bytes = outputs.take();
        assert!(bytes.is_empty(), "a buffer is handed over empty");
        bytes.extend_from_slice(json);
        outputs.batch(bytes, records)
    }

    #[test]
    fn an_output_buffer_is_reused_once_its_batch_is_dropped() {
        let mut outputs = Outputs::default();
        let big = format!("[{}]", vec!["1"; 10_000].join(","));
        let first = write(&mut outputs, big.as_bytes(), 10_000);
        let address = first.as_bytes().as_ptr();
        drop(first);
        let second = write(&mut outputs, b"[2]", 1);
        assert_eq!(second.as_bytes(), b"[2]", "nothing of the batch before");
        assert_eq!(second.as_bytes().as_ptr(), address, "the same buffer");
        // While a batch is held, the next output gets a buffer of its own.
        let third = write(&mut outputs, b"[3,3]", 2);
        assert_eq!(second.as_bytes(), b"[2]");
        assert_eq!(third.as_bytes(), b"[3,3]");
        assert_ne!(third.as_bytes().as_ptr(), address);
        drop((second, third));
        // An empty output keeps its buffer in hand and holds `[]` without it.
        let empty = write(&mut outputs, b" [ ] ", 0);
        assert_eq!(empty.as_bytes(), b"[]");
        let after = write(&mut outputs, b"[4]", 1);
        assert_eq!(after.as_bytes(), b"[4]");
        // A clone keeps the buffer until the last one is dropped.
        let clone = after.clone();
        drop(after);
        let next = write(&mut outputs, b"[5]", 1);
        assert_eq!(clone.as_bytes(), b"[4]");
        assert_eq!(next.as_bytes(), b"[5]");
    }

    #[test]
    fn a_very_large_output_buffer_is_not_kept() {
        let mut outputs = Outputs::default();
        let mut bytes = outputs.take();
        bytes.reserve(MAX_KEPT + 1);
        bytes.extend_from_slice(b"[1]");
        drop(outputs.batch(bytes, 1));
        assert!(outputs.take().capacity() < MAX_KEPT);
    }

    #[test]
    fn inner_json_strips_the_brackets() {
        assert_eq!(Batch::from_json(" [1, 2] ").inner_json(), b"1, 2");
        assert_eq!(Batch::from_json("[]").inner_json(), b"");
    }
}
