//! Binary payloads carried inside JSON messages as standard base64 strings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that travel as a base64 string in JSON (output chunks are not always UTF-8).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes64(pub Vec<u8>);

impl std::fmt::Debug for Bytes64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes64({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes64 {
    fn from(v: Vec<u8>) -> Self {
        Bytes64(v)
    }
}

impl From<&[u8]> for Bytes64 {
    fn from(v: &[u8]) -> Self {
        Bytes64(v.to_vec())
    }
}

impl std::ops::Deref for Bytes64 {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Bytes64)
            .map_err(serde::de::Error::custom)
    }
}
