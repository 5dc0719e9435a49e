//! A development key pair and its tokens: `infra/dev up` makes the pair under its state folder
//! (`stack-admin dev-keys`), the services read the JWKS, and `infra/dev token` (`stack-admin
//! token`) and the tests sign tokens with the private key beside it. Never use these keys beyond a
//! development machine: anyone who can read the folder can act for any tenant.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::settings::Settings;

/// The JWKS the services read.
pub const JWKS_FILE: &str = "jwks.json";
/// The private key (PKCS#8 PEM, Ed25519) the tokens are signed with.
pub const SIGNING_KEY_FILE: &str = "dev-signing-key.pem";

/// Make the key pair in `dir` unless it is there already; returns the JWKS's path.
pub fn ensure_keys(dir: &Path) -> anyhow::Result<PathBuf> {
    let jwks = dir.join(JWKS_FILE);
    let private = dir.join(SIGNING_KEY_FILE);
    if jwks.exists() && private.exists() {
        return Ok(jwks);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    write_private(&private, pem.as_bytes())?;
    std::fs::write(&jwks, jwks_of(&key)?).with_context(|| format!("writing {}", jwks.display()))?;
    Ok(jwks)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key id of a public key: derived from it, so the signer and the JWKS always agree.
pub fn kid_of(key: &SigningKey) -> String {
    format!("dev-{}", &b64url(key.verifying_key().as_bytes())[..12])
}

fn jwks_of(key: &SigningKey) -> anyhow::Result<String> {
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(key.verifying_key().as_bytes()),
            "kid": kid_of(key),
            "alg": "EdDSA",
            "use": "sig",
        }]
    });
    Ok(serde_json::to_string_pretty(&jwks)?)
}

/// The signing key beside a JWKS file.
pub fn signing_key_beside(jwks: &Path) -> PathBuf {
    jwks.with_file_name(SIGNING_KEY_FILE)
}

pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))
}

/// Sign `claims` with `key` (EdDSA, its `kid` in the header).
pub fn sign(key: &SigningKey, claims: &serde_json::Value) -> anyhow::Result<String> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid_of(key));
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_der(der.as_bytes()),
    )?)
}

/// The claims of a token for `tenant`/`subject` with `scopes`, valid from now for `ttl`, as the
/// services configured by `settings` expect them.
pub fn claims(
    settings: &Settings,
    tenant: &str,
    subject: &str,
    scopes: &[&str],
    ttl: Duration,
) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "iss": settings.auth.issuer,
        "aud": settings.auth.audience,
        "sub": subject,
        "scope": scopes.join(" "),
        "iat": now,
        "nbf": now,
        "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        "jti": uuid::Uuid::now_v7().to_string(),
    });
    claims[settings.auth.tenant_claim.as_str()] = serde_json::Value::String(tenant.to_string());
    claims
}

/// A token the services configured by `settings` accept, signed with the development key beside
/// `settings.auth.jwks`.
pub fn mint_for(
    settings: &Settings,
    tenant: &str,
    subject: &str,
    scopes: &[&str],
    ttl: Duration,
) -> anyhow::Result<String> {
    if settings.auth.jwks.is_empty() || settings.auth.jwks.starts_with("http") {
        bail!("auth.jwks is not a local file: no development signing key to sign with");
    }
    let key = load_signing_key(&signing_key_beside(Path::new(&settings.auth.jwks)))?;
    sign(&key, &claims(settings, tenant, subject, scopes, ttl))
}

/// Parse a duration like `90s`, `15m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_ttl(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{raw:?} is not a duration like 90s, 15m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{raw:?} is not a duration like 90s, 15m, 1h or 2d"),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("devkeys-{}", uuid::Uuid::now_v7()));
        let jwks = ensure_keys(&dir).unwrap();
        let first = std::fs::read_to_string(&jwks).unwrap();
        ensure_keys(&dir).unwrap();
        assert_eq!(first, std::fs::read_to_string(&jwks).unwrap());
        let key = load_signing_key(&signing_key_beside(&jwks)).unwrap();
        assert!(first.contains(&kid_of(&key)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
