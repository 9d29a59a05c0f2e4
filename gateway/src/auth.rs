//! Tokens: a signed JWT names the user (and may name the device). Checked at the upgrade; the session closes
//! the connection when the token expires (4001).

use chat_model::{DeviceId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no device id: pass device_id in the query or did in the token")]
    NoDevice,
    #[error("device id in the query differs from the token's")]
    DeviceMismatch,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    did: Option<String>,
}

/// Who a connection is, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub device: DeviceId,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// How tokens are checked: which algorithms are accepted, with which keys, and which claims are required.
#[derive(Clone, Default)]
pub struct TokenPolicy {
    /// Shared secret for the HMAC algorithms (HS256, HS384, HS512); development and simple deployments.
    pub secret: Option<Vec<u8>>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) for the asymmetric algorithms; production.
    pub public_key_pem: Option<Vec<u8>>,
    /// Accepted algorithms; a token signed with any other (or with `none`) is refused.
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

pub struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<(KeyFamily, DecodingKey)>,
    validation: Validation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => KeyFamily::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => KeyFamily::Ec,
        Algorithm::EdDSA => KeyFamily::Ed,
    }
}

/// Parses an algorithm name as it appears in a token header (`HS256`, `RS256`, `ES256`, `EdDSA`, ...).
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    name.trim().parse::<Algorithm>().map_err(|_| format!("unknown JWT algorithm {name:?}"))
}

impl Verifier {
    /// A verifier for `policy`; fails when an accepted algorithm has no key of its kind.
    pub fn new(policy: &TokenPolicy) -> Result<Verifier, String> {
        if policy.algorithms.is_empty() {
            return Err("no JWT algorithm accepted".into());
        }
        let hmac = match &policy.secret {
            Some(s) if s.len() < 32 => return Err("the JWT secret must be at least 32 bytes".into()),
            Some(s) => Some(DecodingKey::from_secret(s)),
            None => None,
        };
        let public = match &policy.public_key_pem {
            None => None,
            Some(pem) => Some(
                [
                    (KeyFamily::Rsa, DecodingKey::from_rsa_pem(pem)),
                    (KeyFamily::Ec, DecodingKey::from_ec_pem(pem)),
                    (KeyFamily::Ed, DecodingKey::from_ed_pem(pem)),
                ]
                .into_iter()
                .find_map(|(f, k)| k.ok().map(|k| (f, k)))
                .ok_or("the JWT public key is not an RSA, EC or Ed25519 public key in PEM")?,
            ),
        };
        for alg in &policy.algorithms {
            let usable = match family(*alg) {
                KeyFamily::Hmac => hmac.is_some(),
                f => public.as_ref().is_some_and(|(pf, _)| *pf == f),
            };
            if !usable {
                return Err(format!("JWT algorithm {alg:?} is accepted but no key of its kind is configured"));
            }
        }
        let mut validation = Validation::new(policy.algorithms[0]);
        validation.algorithms = policy.algorithms.clone();
        validation.leeway = policy.leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer or audience is also required to be present: the library checks only claims
        // that a token carries, so a token without `iss` would otherwise pass an issuer check.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &policy.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &policy.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier { hmac, public, validation })
    }

    /// HS256 with a shared secret (what development setups and the tests use).
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Result<Verifier, String> {
        Verifier::new(&TokenPolicy {
            secret: Some(secret.to_vec()),
            algorithms: vec![Algorithm::HS256],
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway_secs: 30,
            ..TokenPolicy::default()
        })
    }

    /// Checks `token` and picks the device: the query's `device_id`, else the token's `did`.
    pub fn verify(&self, token: Option<&str>, device_param: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        // `alg: none` and unknown algorithms fail here: the header does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        // The key is chosen by the accepted algorithm's kind, never by what the token asks for otherwise: an
        // HMAC token "signed" with the RSA public key finds no HMAC key unless one is configured.
        let key = match family(header.alg) {
            KeyFamily::Hmac => self.hmac.as_ref(),
            f => self.public.as_ref().filter(|(pf, _)| *pf == f).map(|(_, k)| k),
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let user = UserId::parse(&claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        let device = match (device_param, claims.did.as_deref()) {
            (Some(q), Some(t)) if q != t => return Err(AuthError::DeviceMismatch),
            (Some(d), _) | (None, Some(d)) => DeviceId::parse(d).map_err(|e| AuthError::Invalid(e.to_string()))?,
            (None, None) => return Err(AuthError::NoDevice),
        };
        Ok(Identity { user, device, expires_at: claims.exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde::Serialize;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[derive(Serialize)]
    struct T<'a> {
        sub: &'a str,
        exp: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        did: Option<&'a str>,
    }

    fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        )
        .unwrap_or(0)
    }

    fn token(secret: &[u8], sub: &str, exp: i64, did: Option<&str>) -> String {
        encode(&Header::new(Algorithm::HS256), &T { sub, exp, did }, &EncodingKey::from_secret(secret))
            .expect("encodes")
    }

    #[test]
    fn tokens_are_checked() {
        let v = Verifier::hs256(SECRET, None, None).expect("verifier");
        let good = token(SECRET, "alice", now() + 60, None);
        assert_eq!(v.verify(Some(&good), Some("phone")).map(|i| i.user.to_string()), Ok("alice".into()));
        assert_eq!(v.verify(None, Some("phone")), Err(AuthError::Missing));
        assert_eq!(v.verify(Some(&good), None), Err(AuthError::NoDevice));
        let bad_sig = token(b"another-secret-another-secret-xx", "alice", now() + 60, None);
        assert!(matches!(v.verify(Some(&bad_sig), Some("phone")), Err(AuthError::Invalid(_))));
        let expired = token(SECRET, "alice", now() - 3600, None);
        assert!(matches!(v.verify(Some(&expired), Some("phone")), Err(AuthError::Invalid(_))));
        let bad_sub = token(SECRET, "al ice", now() + 60, None);
        assert!(matches!(v.verify(Some(&bad_sub), Some("phone")), Err(AuthError::Invalid(_))));
        let with_did = token(SECRET, "bob", now() + 60, Some("tablet"));
        assert_eq!(v.verify(Some(&with_did), None).map(|i| i.device.to_string()), Ok("tablet".into()));
        assert_eq!(v.verify(Some(&with_did), Some("phone")), Err(AuthError::DeviceMismatch));
    }

    /// Signs arbitrary claims with `alg` and `key`.
    fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        encode(&Header::new(alg), claims, key).expect("encodes")
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"sub": "alice", "exp": now() + 600});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    }

    fn refused(v: &Verifier, token: &str) -> bool {
        matches!(v.verify(Some(token), Some("phone")), Err(AuthError::Invalid(_)))
    }

    #[test]
    fn every_bad_token_is_refused() {
        let policy = TokenPolicy {
            secret: Some(SECRET.to_vec()),
            algorithms: vec![Algorithm::HS256],
            issuer: Some("https://auth.example".into()),
            audience: Some("chat".into()),
            leeway_secs: 30,
            ..TokenPolicy::default()
        };
        let v = Verifier::new(&policy).expect("verifier");
        let key = EncodingKey::from_secret(SECRET);
        let good = claims(serde_json::json!({"iss": "https://auth.example", "aud": "chat"}));
        assert!(v.verify(Some(&sign(Algorithm::HS256, &key, &good)), Some("phone")).is_ok());
        let with = |extra: serde_json::Value| {
            let mut c = good.clone();
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            sign(Algorithm::HS256, &key, &c)
        };
        // Expired, within and past the leeway.
        assert!(!refused(&v, &with(serde_json::json!({"exp": now() - 10}))), "within the leeway");
        assert!(refused(&v, &with(serde_json::json!({"exp": now() - 120}))), "expired past the leeway");
        // Not valid yet.
        assert!(refused(&v, &with(serde_json::json!({"nbf": now() + 120}))), "nbf in the future");
        // Wrong issuer or audience, or none.
        assert!(refused(&v, &with(serde_json::json!({"iss": "https://evil.example"}))));
        assert!(refused(&v, &with(serde_json::json!({"aud": "other"}))));
        assert!(refused(&v, &sign(Algorithm::HS256, &key, &claims(serde_json::json!({"aud": "chat"})))), "no iss");
        let no_aud = claims(serde_json::json!({"iss": "https://auth.example"}));
        assert!(refused(&v, &sign(Algorithm::HS256, &key, &no_aud)), "no aud");
        // Another HMAC algorithm than the accepted one, with the right secret.
        assert!(refused(&v, &sign(Algorithm::HS512, &key, &good)), "HS512 when only HS256 is accepted");
        // `alg: none`: an unsigned token.
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(good.to_string().as_bytes());
        assert!(refused(&v, &format!("{header}.{body}.")), "alg none");
        // Garbage.
        assert!(refused(&v, "a.b.c"));
        assert!(refused(&v, "not a token"));
    }

    #[test]
    fn public_keys_check_asymmetric_tokens_and_resist_confusion() {
        let pair = rcgen::KeyPair::generate().expect("key pair");
        let public_pem = pair.public_key_pem();
        let policy = TokenPolicy {
            public_key_pem: Some(public_pem.clone().into_bytes()),
            algorithms: vec![Algorithm::ES256],
            leeway_secs: 0,
            ..TokenPolicy::default()
        };
        let v = Verifier::new(&policy).expect("verifier");
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("private key");
        let good = sign(Algorithm::ES256, &private, &claims(serde_json::json!({})));
        assert_eq!(v.verify(Some(&good), Some("phone")).map(|i| i.user.to_string()), Ok("alice".into()));
        // Signed by another key.
        let other = rcgen::KeyPair::generate().expect("key pair");
        let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).expect("private key");
        assert!(refused(&v, &sign(Algorithm::ES256, &other, &claims(serde_json::json!({})))));
        // Key confusion: an HS256 token whose "secret" is the public key.
        let confused =
            sign(Algorithm::HS256, &EncodingKey::from_secret(public_pem.as_bytes()), &claims(serde_json::json!({})));
        assert!(refused(&v, &confused), "an HMAC token signed with the public key");
        // A policy that accepts an algorithm with no key of its kind does not start.
        let mismatched = TokenPolicy { algorithms: vec![Algorithm::RS256], ..policy.clone() };
        assert!(Verifier::new(&mismatched).is_err());
        assert!(Verifier::new(&TokenPolicy { algorithms: vec![], ..policy }).is_err());
        assert!(
            Verifier::new(&TokenPolicy {
                secret: Some(b"short".to_vec()),
                algorithms: vec![Algorithm::HS256],
                ..TokenPolicy::default()
            })
            .is_err()
        );
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}
