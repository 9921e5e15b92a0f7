//! Hex text of bytes and of their SHA-256: the one spelling every digest
//! the toolkit writes or compares uses (lowercase, as `step certificate
//! fingerprint` and `sha256sum` print them).

use sha2::{Digest, Sha256};

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sha256_read_as_tools_print_them() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        // sha256sum of the empty input.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
