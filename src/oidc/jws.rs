//! Talking to the provider (and the other trusted issuers): the checks every JWT we accept
//! shares, whatever it is — ID token, logout token or bearer access token (security rules 5,
//! 14, 32; RFC 7515, RFC 8725). A compact JWS of exactly three segments, JSON objects without
//! duplicate members, an allowed `alg`, no `crit`, a key from the issuer's JWKS (or the
//! configured HMAC secret, never anything the token names), a valid signature.
//!
//! What the claims must say differs by kind of token and is the caller's business; the small
//! readers here (`aud`, NumericDate) keep that business spelled one way.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::jwks::Jwks;

/// The header or payload of a JWT.
pub type Claims = serde_json::Map<String, Value>;

/// Why a JWS was refused. Names a reason, never a value from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsRejected {
    TooLarge,
    NotCompactJws,
    Malformed,
    DuplicateMember,
    AlgorithmNotAllowed,
    CriticalHeader,
    UnknownKey,
    /// The issuer's key set could not be fetched: the caller fails closed (rule 36).
    KeysUnavailable,
    BadSignature,
}

impl JwsRejected {
    /// A short phrase for logs.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::TooLarge => "too large",
            Self::NotCompactJws => "not a compact JWS",
            Self::Malformed => "malformed",
            Self::DuplicateMember => "duplicate JSON member",
            Self::AlgorithmNotAllowed => "algorithm not allowed",
            Self::CriticalHeader => "crit header",
            Self::UnknownKey => "unknown key",
            Self::KeysUnavailable => "keys unavailable",
            Self::BadSignature => "bad signature",
        }
    }
}

/// A token split and decoded, its signature not yet checked: nothing in it is to be believed
/// before [`Jws::verify`] succeeds, except to pick which issuer's rules apply.
pub struct Jws<'a> {
    raw: &'a str,
    /// Length of `header.payload`, the signed message.
    signed_len: usize,
    signature: &'a str,
    pub header: Claims,
    pub claims: Claims,
}

impl<'a> Jws<'a> {
    /// Exactly three non-empty segments (no JSON serialisation, no JWE, no unsigned token),
    /// header and payload JSON objects with unique members; refused above `max_bytes` before
    /// any decoding.
    pub fn parse(raw: &'a str, max_bytes: usize) -> Result<Self, JwsRejected> {
        if raw.len() > max_bytes {
            return Err(JwsRejected::TooLarge);
        }
        let mut parts = raw.split('.');
        let (Some(h64), Some(p64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsRejected::NotCompactJws);
        };
        if h64.is_empty() || p64.is_empty() || signature.is_empty() {
            return Err(JwsRejected::NotCompactJws);
        }
        Ok(Self {
            raw,
            signed_len: h64.len() + 1 + p64.len(),
            signature,
            header: decode_object(h64)?,
            claims: decode_object(p64)?,
        })
    }

    /// Whether the `typ` header, when there is one, is one of `accepted` (RFC 8725 §3.11
    /// explicit typing; the `application/` prefix is optional, case does not matter).
    /// `None` when the header has no `typ`.
    pub fn typ_is(&self, accepted: &[&str]) -> Option<bool> {
        let typ = self.header.get("typ")?;
        let typ = typ.as_str().unwrap_or("");
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        Some(accepted.iter().any(|a| typ.eq_ignore_ascii_case(a)))
    }

    /// Checks the signature: `alg` in `algorithms`, no `crit` (RFC 7515 §4.1.11: extensions we
    /// do not understand must be refused; we understand none), the key by `kid` (or the only
    /// key for `alg`) from `jwks`. HMAC only with `hmac_secret`, so a token "signed" with the
    /// issuer's public key as an HMAC secret can never verify (algorithm confusion, rule 14).
    pub async fn verify(
        &self,
        algorithms: &[Algorithm],
        hmac_secret: Option<&[u8]>,
        jwks: &Jwks,
    ) -> Result<Algorithm, JwsRejected> {
        let alg = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok())
            .filter(|a| algorithms.contains(a))
            .ok_or(JwsRejected::AlgorithmNotAllowed)?;
        if self.header.contains_key("crit") {
            return Err(JwsRejected::CriticalHeader);
        }
        let kid = match self.header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwsRejected::Malformed),
        };
        let hmac;
        let published;
        let key: &DecodingKey =
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                hmac =
                    DecodingKey::from_secret(hmac_secret.ok_or(JwsRejected::AlgorithmNotAllowed)?);
                &hmac
            } else {
                let found = match kid {
                    Some(kid) => jwks.get(kid).await,
                    None => jwks.get_only(alg).await,
                };
                published = found
                    .map_err(|_| JwsRejected::KeysUnavailable)?
                    .filter(|k| k.accepts(alg))
                    .ok_or(JwsRejected::UnknownKey)?;
                &published.key
            };
        let message = &self.raw.as_bytes()[..self.signed_len];
        match jsonwebtoken::crypto::verify(self.signature, message, key, alg) {
            Ok(true) => Ok(alg),
            _ => Err(JwsRejected::BadSignature),
        }
    }
}

/// The `aud` claim in one of the two shapes RFC 7519 §4.1.3 allows: a string, or an array of
/// strings. `None` when it is absent or of any other shape (then it names no one).
pub fn audiences(claims: &Claims) -> Option<Vec<&str>> {
    match claims.get("aud")? {
        Value::String(a) => Some(vec![a.as_str()]),
        Value::Array(list) => list.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// Whether `aud` names one of `wanted`.
pub fn audience_in(claims: &Claims, wanted: &[impl AsRef<str>]) -> bool {
    audiences(claims).is_some_and(|aud| aud.iter().any(|a| wanted.iter().any(|w| w.as_ref() == *a)))
}

/// A NumericDate claim (RFC 7519 §2: may be fractional; we compare whole seconds). `Err` when
/// it is there but not a non-negative number.
pub fn number(claims: &Claims, name: &str) -> Result<Option<u64>, JwsRejected> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                // Truncation is intended (fractional seconds do not matter at this leeway)
                // and the range is checked just above.
                let whole = f as u64;
                Ok(Some(whole))
            }
            _ => Err(JwsRejected::Malformed),
        },
        Some(_) => Err(JwsRejected::Malformed),
    }
}

/// Decodes one base64url JSON-object segment, refusing duplicate members (rule 32: parsers
/// that disagree on which duplicate wins let an attacker show each a different value).
fn decode_object(segment: &str) -> Result<Claims, JwsRejected> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwsRejected::Malformed)?;
    match serde_json::from_slice::<UniqueObject>(&bytes) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(e) if e.to_string().contains(DUPLICATE) => Err(JwsRejected::DuplicateMember),
        Err(_) => Err(JwsRejected::Malformed),
    }
}

const DUPLICATE: &str = "duplicate JSON member";

/// A top-level JSON object whose member names are unique.
struct UniqueObject(Claims);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut map = Claims::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn aud_is_a_string_or_an_array_of_strings() {
        assert_eq!(audiences(&claims(json!({"aud": "a"}))), Some(vec!["a"]));
        assert_eq!(
            audiences(&claims(json!({"aud": ["a", "b"]}))),
            Some(vec!["a", "b"])
        );
        assert_eq!(audiences(&claims(json!({"aud": ["a", 1]}))), None);
        assert_eq!(audiences(&claims(json!({"aud": 1}))), None);
        assert_eq!(audiences(&claims(json!({}))), None);
        assert!(audience_in(
            &claims(json!({"aud": ["x", "b"]})),
            &["a", "b"]
        ));
        assert!(!audience_in(&claims(json!({"aud": ["x", 2]})), &["x"]));
    }

    #[test]
    fn shape_and_duplicates_are_refused_before_any_key_is_looked_up() {
        let seg = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let h = seg(r#"{"alg":"RS256"}"#);
        let p = seg(r#"{"sub":"a"}"#);
        assert!(Jws::parse(&format!("{h}.{p}.sig"), 1024).is_ok());
        for (token, want) in [
            (format!("{h}.{p}"), JwsRejected::NotCompactJws),
            (format!("{h}.{p}."), JwsRejected::NotCompactJws),
            (format!("{h}.{p}.s.x"), JwsRejected::NotCompactJws),
            (format!("{h}.!!.s"), JwsRejected::Malformed),
            (format!("{h}.{}.s", seg("[1]")), JwsRejected::Malformed),
            (
                format!("{h}.{}.s", seg(r#"{"sub":"a","sub":"b"}"#)),
                JwsRejected::DuplicateMember,
            ),
        ] {
            assert_eq!(Jws::parse(&token, 1024).err(), Some(want), "{token}");
        }
        assert_eq!(
            Jws::parse(&format!("{h}.{p}.sig"), 10).err(),
            Some(JwsRejected::TooLarge)
        );
    }

    #[test]
    fn typ_is_compared_without_prefix_or_case() {
        let seg = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let with = |typ: &str| format!("{}.{}.s", seg(typ), seg("{}"));
        let at = with(r#"{"typ":"application/AT+JWT"}"#);
        assert_eq!(
            Jws::parse(&at, 1024).unwrap().typ_is(&["at+jwt"]),
            Some(true)
        );
        let jwt = with(r#"{"typ":"JWT"}"#);
        assert_eq!(
            Jws::parse(&jwt, 1024).unwrap().typ_is(&["at+jwt"]),
            Some(false)
        );
        let none = with("{}");
        assert_eq!(Jws::parse(&none, 1024).unwrap().typ_is(&["at+jwt"]), None);
    }
}
