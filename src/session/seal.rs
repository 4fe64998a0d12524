//! Sealing: turning bytes into a cookie value the browser can neither read nor forge, and back.
//!
//! AES-256-GCM-SIV (RFC 8452) with a random 96-bit nonce: SIV stays safe if a nonce ever repeats,
//! which a random nonce under one long-lived key can do after enough cookies (RFC 8452 §9). Each
//! configured secret becomes a key through HKDF-SHA256 (RFC 5869), so the raw secret never keys
//! the cipher directly and a future format can derive an unrelated key from the same secret.
//!
//! Wire form: base64url without padding of `version (1 byte) || nonce (12) || ciphertext || tag
//! (16)`. The AAD is the cookie's purpose (`"session"`, `"login"`), so a cookie sealed for one
//! purpose never opens as another. Opening never errors: anything that does not open is `None`
//! (rule 8).

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::SessionError;
use crate::config::Secret;

/// Bumped when the wire form or the key derivation changes; old cookies then fail to open and
/// users log in again, which is the safe failure.
const VERSION: u8 = 1;
/// HKDF `info`: binds the derived key to this use of the secret.
const HKDF_INFO: &[u8] = b"gatehouse session v1";
const TAG_LEN: usize = 16;
/// The smallest sealed value: version, nonce and tag around an empty plaintext.
const MIN_SEALED: usize = 1 + NONCE_LEN + TAG_LEN;

/// What a sealed value is for; it is the AAD, so purposes cannot be swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Login,
    /// The cookie of the Redis store: only the session's random id.
    SessionId,
    /// A session at rest in Redis, bound to its key (see [`Sealer::seal_bytes`]).
    Stored,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"session",
            Purpose::Login => b"login",
            Purpose::SessionId => b"session-id",
            Purpose::Stored => b"session-stored",
        }
    }

    /// The purpose, then (when given) a zero byte and `binding`: a value sealed under one key
    /// of a store does not open under another.
    fn aad_with(self, binding: &[u8]) -> Vec<u8> {
        let mut aad = self.aad().to_vec();
        if !binding.is_empty() {
            aad.push(0);
            aad.extend_from_slice(binding);
        }
        aad
    }
}

/// The keys derived from the configured secrets: the first seals, every one opens (rule 11).
pub struct Sealer {
    keys: Vec<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// Derives one key per secret. Fails with no secret at all: a gateway that cannot seal must
    /// not start.
    pub fn new(secrets: &[Secret<Vec<u8>>]) -> Result<Self, SessionError> {
        if secrets.is_empty() {
            return Err(SessionError::NoSecret);
        }
        let salt = Salt::new(HKDF_SHA256, &[]);
        let keys = secrets
            .iter()
            .map(|secret| {
                let mut key = [0u8; 32];
                salt.extract(secret.expose())
                    .expand(&[HKDF_INFO], &AES_256_GCM_SIV)
                    .and_then(|okm| okm.fill(&mut key))
                    .map_err(|_| SessionError::Crypto)?;
                let unbound =
                    UnboundKey::new(&AES_256_GCM_SIV, &key).map_err(|_| SessionError::Crypto)?;
                Ok(LessSafeKey::new(unbound))
            })
            .collect::<Result<Vec<_>, SessionError>>()?;
        Ok(Self { keys })
    }

    /// Encrypts `plaintext` with the first key and encodes it for a cookie value.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Result<String, SessionError> {
        Ok(URL_SAFE_NO_PAD.encode(self.seal_bytes(purpose, b"", plaintext)?))
    }

    /// Decodes and decrypts a cookie value with each key in turn; `None` for anything that is
    /// not exactly what one of our keys sealed for this purpose.
    pub fn open(&self, purpose: Purpose, value: &[u8]) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        self.open_bytes(purpose, b"", &raw)
    }

    /// [`Self::seal`] without the base64 (for a store that keeps bytes), and with `binding`
    /// (say, the store key) authenticated along with the purpose.
    pub fn seal_bytes(
        &self,
        purpose: Purpose,
        binding: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let key = self.keys.first().ok_or(SessionError::NoSecret)?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SessionError::Crypto)?;
        let mut out = Vec::with_capacity(MIN_SEALED + plaintext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.aad_with(binding).as_slice()),
            &mut body,
        )
        .map_err(|_| SessionError::Crypto)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Self::seal_bytes`] made with the same purpose and binding.
    pub fn open_bytes(&self, purpose: Purpose, binding: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
        if raw.len() < MIN_SEALED || raw.first() != Some(&VERSION) {
            return None;
        }
        let nonce_bytes: [u8; NONCE_LEN] = raw.get(1..1 + NONCE_LEN)?.try_into().ok()?;
        let sealed = raw.get(1 + NONCE_LEN..)?;
        let aad = purpose.aad_with(binding);
        // A failed open decrypts in place, so each key gets a fresh copy of the ciphertext.
        self.keys.iter().find_map(|key| {
            let mut buf = sealed.to_vec();
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce_bytes),
                    Aad::from(aad.as_slice()),
                    &mut buf,
                )
                .ok()?;
            Some(plain.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&[u8]]) -> Sealer {
        let secrets: Vec<_> = secrets.iter().map(|s| Secret::new(s.to_vec())).collect();
        Sealer::new(&secrets).unwrap()
    }

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn sealed_value_round_trips_and_is_url_safe() {
        let s = sealer(&[A]);
        let v = s.seal(Purpose::Session, b"hello").unwrap();
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(s.open(Purpose::Session, v.as_bytes()).unwrap(), b"hello");
    }

    #[test]
    fn same_plaintext_seals_differently_each_time() {
        let s = sealer(&[A]);
        assert_ne!(
            s.seal(Purpose::Session, b"x").unwrap(),
            s.seal(Purpose::Session, b"x").unwrap()
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let s = sealer(&[A]);
        let v = s.seal(Purpose::Session, b"some session").unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            let t = URL_SAFE_NO_PAD.encode(t);
            assert!(s.open(Purpose::Session, t.as_bytes()).is_none(), "byte {i}");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let s = sealer(&[A]);
        let v = s.seal(Purpose::Session, b"some session").unwrap();
        for n in 0..v.len() {
            assert!(
                s.open(Purpose::Session, &v.as_bytes()[..n]).is_none(),
                "{n}"
            );
        }
    }

    #[test]
    fn foreign_key_and_wrong_purpose_are_refused() {
        let v = sealer(&[A]).seal(Purpose::Login, b"x").unwrap();
        assert!(sealer(&[B]).open(Purpose::Login, v.as_bytes()).is_none());
        assert!(sealer(&[A]).open(Purpose::Session, v.as_bytes()).is_none());
    }

    #[test]
    fn rotation_new_secret_seals_old_secret_still_opens() {
        let old = sealer(&[A]).seal(Purpose::Session, b"old").unwrap();
        let rotated = sealer(&[B, A]);
        assert_eq!(
            rotated.open(Purpose::Session, old.as_bytes()).unwrap(),
            b"old"
        );
        let new = rotated.seal(Purpose::Session, b"new").unwrap();
        assert!(
            sealer(&[A])
                .open(Purpose::Session, new.as_bytes())
                .is_none()
        );
        assert_eq!(
            sealer(&[B]).open(Purpose::Session, new.as_bytes()).unwrap(),
            b"new"
        );
    }

    #[test]
    fn a_stored_value_opens_only_under_its_own_binding() {
        let s = sealer(&[A]);
        let v = s.seal_bytes(Purpose::Stored, b"key-1", b"x").unwrap();
        assert_eq!(s.open_bytes(Purpose::Stored, b"key-1", &v).unwrap(), b"x");
        assert!(s.open_bytes(Purpose::Stored, b"key-2", &v).is_none());
        assert!(s.open_bytes(Purpose::Stored, b"", &v).is_none());
        assert!(s.open_bytes(Purpose::Session, b"key-1", &v).is_none());
        let id = s.seal(Purpose::SessionId, b"id").unwrap();
        assert!(s.open(Purpose::Session, id.as_bytes()).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let s = sealer(&[A]);
        for g in [&b""[..], b"=", b"!!!!", b"AQ", &[0xff; 64], &[b'A'; 10_000]] {
            assert!(s.open(Purpose::Session, g).is_none());
        }
    }

    #[test]
    fn no_secret_is_a_configuration_error() {
        assert!(matches!(Sealer::new(&[]), Err(SessionError::NoSecret)));
    }
}
