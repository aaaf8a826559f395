//! Batches: a JSON array of records, as bytes, shared without copying.

use std::fmt;
use std::sync::Arc;

use abi_stable::std_types::RVec;
use serde::de::DeserializeOwned;
use serde::Serialize;

mod check;

pub(crate) use check::count_array;

/// A batch of records: the bytes of a JSON array.
///
/// A batch is cheap to clone (it is shared, not copied), so a caller keeps its input
/// when a call fails and can retry it or route it elsewhere. A plugin's output stays
/// in the buffer the plugin allocated and is freed there; a pipeline hands it to the
/// next plugin without parsing it.
#[derive(Clone)]
pub struct Batch {
    /// `None` for an empty array a plugin returned: the host validated it, frees the
    /// plugin's buffer at once and holds `[]` without an allocation.
    bytes: Option<Arc<Bytes>>,
    records: Option<usize>,
}

enum Bytes {
    Host(Vec<u8>),
    /// A plugin's buffer, freed by the plugin's allocator.
    Plugin(RVec<u8>),
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
    pub(crate) fn from_plugin(bytes: RVec<u8>, records: usize) -> Batch {
        Batch {
            bytes: (records > 0).then(|| Arc::new(Bytes::Plugin(bytes))),
            records: Some(records),
        }
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self.bytes.as_deref() {
            None => b"[]",
            Some(Bytes::Host(bytes)) => bytes,
            Some(Bytes::Plugin(bytes)) => bytes.as_slice(),
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

    #[test]
    fn inner_json_strips_the_brackets() {
        assert_eq!(Batch::from_json(" [1, 2] ").inner_json(), b"1, 2");
        assert_eq!(Batch::from_json("[]").inner_json(), b"");
    }
}
