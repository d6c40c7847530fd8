//! Model bundles: one registry entry as bytes, to move between databases.
//!
//! Layout (little-endian): the magic `GNMBNDL1`, the format version (u32), the header's length
//! (u64) and the header (JSON: the registry row's fields, the sections' lengths), the sections
//! (weights, then ONNX bytes) and last the SHA-256 of everything before it. Reading checks the
//! magic, the format version, the checksum, and every length against the bytes there are (and
//! the header against [`MAX_HEADER`]) before anything is allocated.

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"GNMBNDL1";
pub const FORMAT_VERSION: u32 = 1;
/// The largest header read (its JSON holds the config, metrics and tokenizer).
pub const MAX_HEADER: usize = 64 << 20;

/// The registry row a bundle carries (what `genome.models` holds, less id and stage).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub name: String,
    pub version: String,
    pub task: String,
    pub dimension: i32,
    pub config: serde_json::Value,
    pub metrics: Option<serde_json::Value>,
    pub tokenizer: Option<String>,
    /// The registry's sha256 of the model (ONNX bytes, or config and weights).
    pub sha256: String,
    pub created_at: Option<String>,
    /// The pg_genome version that wrote the bundle.
    pub written_by: String,
    pub weights_len: Option<u64>,
    pub onnx_len: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub header: Header,
    pub weights: Option<Vec<u8>>,
    pub onnx: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Not a bundle at all.
    NotABundle,
    /// A bundle of a format version this build does not read.
    Version(u32),
    /// The checksum does not match: the bytes were altered or cut.
    Checksum,
    /// Well-formed checksum, inconsistent content.
    Malformed(String),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::NotABundle => write!(f, "not a pg_genome model bundle (bad magic)"),
            BundleError::Version(v) => write!(
                f,
                "bundle format version {v} is not supported: this pg_genome reads format version {FORMAT_VERSION}"
            ),
            BundleError::Checksum => write!(
                f,
                "the bundle's checksum does not match its content: it was altered or truncated"
            ),
            BundleError::Malformed(m) => write!(f, "malformed bundle: {m}"),
        }
    }
}

impl Bundle {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = self.header.clone();
        h.weights_len = self.weights.as_ref().map(|w| w.len() as u64);
        h.onnx_len = self.onnx.as_ref().map(|w| w.len() as u64);
        let header = serde_json::to_vec(&h).expect("a header serialises");
        let mut out = Vec::with_capacity(
            header.len()
                + 52
                + self.weights.as_ref().map_or(0, Vec::len)
                + self.onnx.as_ref().map_or(0, Vec::len),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for s in [&self.weights, &self.onnx].into_iter().flatten() {
            out.extend_from_slice(s);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Bundle, BundleError> {
        if b.len() < 12 || &b[..8] != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(BundleError::Version(version));
        }
        if b.len() < 20 + 32 {
            return Err(BundleError::Checksum);
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(BundleError::Checksum);
        }
        let bad = |m: &str| BundleError::Malformed(m.to_string());
        let hl = u64::from_le_bytes(body[12..20].try_into().unwrap());
        let rest = &body[20..];
        let hl = usize::try_from(hl)
            .ok()
            .filter(|&n| n <= MAX_HEADER && n <= rest.len())
            .ok_or_else(|| bad("the header's length is out of range"))?;
        let header: Header = serde_json::from_slice(&rest[..hl])
            .map_err(|e| BundleError::Malformed(format!("bad header: {e}")))?;
        let rest = &rest[hl..];
        let wl = header.weights_len.unwrap_or(0);
        let ol = header.onnx_len.unwrap_or(0);
        if wl.checked_add(ol) != Some(rest.len() as u64) {
            return Err(bad(
                "the sections' lengths do not add up to the bytes there are",
            ));
        }
        let (w, o) = rest.split_at(wl as usize);
        Ok(Bundle {
            weights: header.weights_len.map(|_| w.to_vec()),
            onnx: header.onnx_len.map(|_| o.to_vec()),
            header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            header: Header {
                name: "m".into(),
                version: "v1".into(),
                task: "sequence-classifier".into(),
                dimension: 5,
                config: serde_json::json!({"kind": "sequence-classifier", "dimension": 5}),
                metrics: Some(serde_json::json!({"accuracy": 0.5})),
                tokenizer: None,
                sha256: "ab".into(),
                created_at: None,
                written_by: "0.8.0".into(),
                weights_len: None,
                onnx_len: None,
            },
            weights: Some(vec![1, 2, 3, 4, 5]),
            onnx: None,
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let back = Bundle::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back.weights, b.weights);
        assert_eq!(back.onnx, None);
        assert_eq!(back.header.name, "m");
        assert_eq!(back.header.weights_len, Some(5));
    }

    #[test]
    fn refuses_what_it_should() {
        let bytes = sample().to_bytes();
        assert_eq!(Bundle::from_bytes(b"hello"), Err(BundleError::NotABundle));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(Bundle::from_bytes(&v2), Err(BundleError::Version(2)));
        // one flipped byte anywhere in the body, or a cut, breaks the checksum
        for at in [13, 30, bytes.len() - 40, bytes.len() - 1] {
            let mut x = bytes.clone();
            x[at] ^= 1;
            assert_eq!(
                Bundle::from_bytes(&x),
                Err(BundleError::Checksum),
                "byte {at}"
            );
        }
        assert_eq!(
            Bundle::from_bytes(&bytes[..bytes.len() - 3]),
            Err(BundleError::Checksum)
        );
        // a consistent checksum over a lying header: refused before anything is allocated
        let mut h = sample();
        h.header.name = "x".into();
        let mut body = h.to_bytes();
        body.truncate(body.len() - 32);
        body[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        assert!(matches!(
            Bundle::from_bytes(&body),
            Err(BundleError::Malformed(_))
        ));
    }
}
