//! `/v1/kv`: read, list, write, compare-and-set and delete keys. Values are bytes; Consul sends
//! them base64-encoded in JSON.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};

use crate::client::{encode_key_path, Client, QueryOptions, QueryResponse};
use crate::Error;

/// One key with its value and indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    /// Full key path.
    pub key: String,
    /// The value's bytes (empty for a key with no value).
    #[serde(deserialize_with = "base64_value")]
    pub value: Bytes,
    /// Opaque flags set by the writer.
    pub flags: u64,
    /// Index of the last write; the `cas` value for the next conditional write.
    pub modify_index: u64,
    /// Index of the key's creation.
    pub create_index: u64,
}

impl KvPair {
    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

fn base64_value<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(Bytes::new()),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom),
    }
}

/// Which write to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCondition {
    /// Write whatever is there.
    Always,
    /// Write only if the key does not exist yet.
    Create,
    /// Write only if the key's `ModifyIndex` still equals this.
    ModifyIndex(u64),
}

impl Client {
    /// One key, or `None` if it does not exist. Consul answers a missing key with 404 and still
    /// sends `X-Consul-Index`, so this blocks like any other query when `options.index` is set.
    pub async fn kv_get(
        &self,
        key: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Option<KvPair>>, Error> {
        let path = format!("/v1/kv/{}", encode_key_path(key));
        let response: QueryResponse<Option<Vec<KvPair>>> =
            self.get_json_optional(&path, options).await?;
        Ok(response.map(|pairs| pairs.and_then(|p| p.into_iter().next())))
    }

    /// Every key under `prefix` (empty when there are none), blocking when `options.index` is set.
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<KvPair>>, Error> {
        let path = format!("/v1/kv/{}?recurse=true", encode_key_path(prefix));
        let response: QueryResponse<Option<Vec<KvPair>>> =
            self.get_json_optional(&path, options).await?;
        Ok(response.map(Option::unwrap_or_default))
    }

    /// Writes `value` at `key` under `condition`; `false` when the condition did not hold.
    pub async fn kv_put(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        condition: WriteCondition,
    ) -> Result<bool, Error> {
        let path = match condition {
            WriteCondition::Always => format!("/v1/kv/{}", encode_key_path(key)),
            WriteCondition::Create => format!("/v1/kv/{}?cas=0", encode_key_path(key)),
            WriteCondition::ModifyIndex(index) => {
                format!("/v1/kv/{}?cas={index}", encode_key_path(key))
            }
        };
        self.put_bytes_for_bool(&path, value.into()).await
    }

    /// Deletes `key` (a missing key is not an error).
    pub async fn kv_delete(&self, key: &str) -> Result<(), Error> {
        let path = format!("/v1/kv/{}", encode_key_path(key));
        self.delete(&path).await
    }
}
