//! Bearer tokens: `base64url(uid.expiry_unix_s).base64url(hmac_sha256(secret, uid.expiry_unix_s))`.
//!
//! Stateless and cheap to check on every request. `orderly token --uid N` mints one with the same secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use orderly_domain::Uid;
use sha2::Sha256;

#[derive(Clone)]
pub struct TokenAuth {
    secret: Vec<u8>,
    admin_token: String,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuth { .. }")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthRejection {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed bearer token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

impl TokenAuth {
    pub fn new(secret: Vec<u8>, admin_token: String) -> TokenAuth {
        assert!(secret.len() >= 16, "the token secret must have at least 16 bytes");
        TokenAuth { secret, admin_token }
    }

    fn sign(&self, payload: &str) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn mint(&self, uid: Uid, expires_unix_s: u64) -> String {
        let payload = format!("{}.{}", uid.0, expires_unix_s);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(self.sign(&payload)))
    }

    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Uid, AuthRejection> {
        let (payload, signature) = token.split_once('.').ok_or(AuthRejection::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthRejection::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthRejection::Malformed)?;
        let payload = String::from_utf8(payload).map_err(|_| AuthRejection::Malformed)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).map_err(|_| AuthRejection::Malformed)?;
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| AuthRejection::BadSignature)?;
        let (uid, expires) = payload.split_once('.').ok_or(AuthRejection::Malformed)?;
        let uid: u64 = uid.parse().map_err(|_| AuthRejection::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| AuthRejection::Malformed)?;
        if expires < now_unix_s {
            return Err(AuthRejection::Expired);
        }
        Ok(Uid(uid))
    }

    /// Constant-time comparison with the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        let (a, b) = (token.as_bytes(), self.admin_token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_is_caught() {
        let auth = TokenAuth::new(b"0123456789abcdef0123".to_vec(), "admin-secret".to_owned());
        let token = auth.mint(Uid(42), 2_000);
        assert_eq!(auth.verify(&token, 1_000), Ok(Uid(42)));
        assert_eq!(auth.verify(&token, 2_001), Err(AuthRejection::Expired));
        let other = TokenAuth::new(b"another-secret-of-16".to_vec(), String::new());
        assert_eq!(other.verify(&token, 1_000), Err(AuthRejection::BadSignature));
        let forged =
            format!("{}.{}", URL_SAFE_NO_PAD.encode("1.2000"), token.split_once('.').map(|p| p.1).unwrap_or(""));
        assert_eq!(auth.verify(&forged, 1_000), Err(AuthRejection::BadSignature));
        assert_eq!(auth.verify("garbage", 1_000), Err(AuthRejection::Malformed));
        assert!(auth.is_admin("admin-secret"));
        assert!(!auth.is_admin("admin-secreT"));
        assert!(!auth.is_admin(""));
    }
}
