//! Batches: a JSON array of records, as bytes, shared without copying.

use std::fmt;
use std::sync::Arc;

use abi_stable::std_types::RVec;
use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::Serialize;

/// A batch of records: the bytes of a JSON array.
///
/// A batch is cheap to clone (it is shared, not copied), so a caller keeps its input
/// when a call fails and can retry it or route it elsewhere. A plugin's output stays
/// in the buffer the plugin allocated and is freed there; a pipeline hands it to the
/// next plugin without parsing it.
#[derive(Clone)]
pub struct Batch {
    /// `None` for an empty batch a plugin returned as no bytes (which reads as `[]`):
    /// the empty batch costs no allocation.
    bytes: Option<Arc<Bytes>>,
    records: Option<usize>,
}

enum Bytes {
    Host(Vec<u8>),
    /// A plugin's buffer, of which the first `json` bytes are the batch (the rest is
    /// the SDK's mark, if any).
    Plugin {
        bytes: RVec<u8>,
        json: usize,
    },
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

    /// A plugin's output. No bytes at all stand for the empty batch `[]` (see
    /// `PluginInstance::process` in plugbay-api), kept without an allocation.
    pub(crate) fn from_plugin(bytes: RVec<u8>, records: Option<usize>) -> Batch {
        if bytes.is_empty() {
            return Batch {
                bytes: None,
                records: Some(0),
            };
        }
        let json = bytes.len();
        Batch {
            bytes: Some(Arc::new(Bytes::Plugin { bytes, json })),
            records,
        }
    }

    /// A plugin's output whose first `json` bytes are a JSON array of `records`
    /// records (the SDK's mark follows them).
    pub(crate) fn from_marked_plugin(bytes: RVec<u8>, json: usize, records: usize) -> Batch {
        Batch {
            bytes: Some(Arc::new(Bytes::Plugin { bytes, json })),
            records: Some(records),
        }
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self.bytes.as_deref() {
            None => b"[]",
            Some(Bytes::Host(bytes)) => bytes,
            Some(Bytes::Plugin { bytes, json }) => &bytes.as_slice()[..*json],
        }
    }

    /// The number of records, when known (batches built from records, and plugin
    /// output the host checked).
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

/// Checks that `bytes` is one JSON array, and counts its elements, without building
/// the records.
pub(crate) fn count_array(bytes: &[u8]) -> Result<usize, String> {
    struct Counter;
    impl<'de> Visitor<'de> for Counter {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                count += 1;
            }
            Ok(count)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let count = serde::Deserializer::deserialize_seq(&mut deserializer, Counter)
        .map_err(|err| err.to_string())?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_arrays_and_refuses_the_rest() {
        assert_eq!(count_array(b"[]"), Ok(0));
        assert_eq!(count_array(br#" [{"a":[1,2]}, 3, "x"] "#), Ok(3));
        assert!(count_array(b"{}")
            .unwrap_err()
            .contains("expected a JSON array"));
        assert!(count_array(b"[1,").is_err());
        assert!(count_array(b"[1] [2]").is_err());
    }

    #[test]
    fn no_bytes_from_a_plugin_is_the_empty_batch() {
        let batch = Batch::from_plugin(RVec::new(), None);
        assert_eq!(batch.as_bytes(), b"[]");
        assert_eq!(batch.len(), Some(0));
        assert!(batch.is_empty());
        assert_eq!(batch.records::<u8>().unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn inner_json_strips_the_brackets() {
        assert_eq!(Batch::from_json(" [1, 2] ").inner_json(), b"1, 2");
        assert_eq!(Batch::from_json("[]").inner_json(), b"");
    }
}
