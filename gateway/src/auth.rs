//! Tokens: a signed JWT names the user (and may name the device). Checked once, at the upgrade.

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

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Verifier { key: DecodingKey::from_secret(secret), validation }
    }

    /// Checks `token` and picks the device: the query's `device_id`, else the token's `did`.
    pub fn verify(&self, token: Option<&str>, device_param: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
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
        let v = Verifier::hs256(SECRET, None, None);
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
}
