//! A user's secret as configured: a plaintext password, a SCRAM verifier,
//! or an md5 hash — and what each can do.

use md5::{Digest, Md5};

use super::scram::{ScramError, ScramSecret};

/// A configured user secret.
#[derive(Clone)]
pub enum Secret {
    /// A plaintext password: any method works, upstream and down.
    Password(String),
    /// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$...`): clients must use
    /// SCRAM; upstream login uses SCRAM passthrough.
    Scram(ScramSecret),
    /// An md5 hash (`md5` + 32 hex digits): clients use md5; upstream login
    /// works against md5 servers.
    Md5(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Secret::Password(_) => "password",
            Secret::Scram(_) => "SCRAM verifier",
            Secret::Md5(_) => "md5 hash",
        };
        write!(f, "Secret({kind}, redacted)")
    }
}

fn is_md5_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Secret {
    /// Reads a configured secret. A string starting with `SCRAM-SHA-256$`
    /// must be a well-formed verifier.
    pub fn parse(s: &str) -> Result<Secret, ScramError> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramSecret::parse(s).map(Secret::Scram);
        }
        if is_md5_hash(s) {
            return Ok(Secret::Md5(s.to_ascii_lowercase()));
        }
        Ok(Secret::Password(s.to_owned()))
    }

    /// The SCRAM secret clients are checked against: derived from a
    /// password (costly: do it once), the verifier itself, or `None` for
    /// an md5 hash.
    pub fn scram(&self) -> Option<ScramSecret> {
        match self {
            Secret::Password(p) => Some(ScramSecret::from_password(p)),
            Secret::Scram(s) => Some(s.clone()),
            Secret::Md5(_) => None,
        }
    }

    /// The md5 hash (`md5` + hex of md5(password + user)), if derivable.
    pub fn md5_hash(&self, user: &str) -> Option<String> {
        match self {
            Secret::Password(p) => Some(format!(
                "md5{}",
                hex(&Md5::digest([p.as_bytes(), user.as_bytes()].concat()))
            )),
            Secret::Md5(h) => Some(h.clone()),
            Secret::Scram(_) => None,
        }
    }
}

/// The answer to an md5 challenge with `salt` for a stored `md5...` hash:
/// `md5` + hex(md5(hex hash + salt)).
pub fn md5_response(hash: &str, salt: [u8; 4]) -> String {
    let inner = hash.strip_prefix("md5").unwrap_or(hash);
    format!(
        "md5{}",
        hex(&Md5::digest([inner.as_bytes(), &salt].concat()))
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert!(matches!(
            Secret::parse("hunter2").unwrap(),
            Secret::Password(_)
        ));
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(
            Secret::parse(&verifier).unwrap(),
            Secret::Scram(_)
        ));
        assert!(matches!(
            Secret::parse("md50123456789abcdef0123456789abcdef").unwrap(),
            Secret::Md5(_)
        ));
        assert!(Secret::parse("SCRAM-SHA-256$broken").is_err());
        assert!(!format!("{:?}", Secret::parse("hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn md5_matches_postgres() {
        let secret = Secret::Password("pw".into());
        let hash = secret.md5_hash("bob").unwrap();
        assert_eq!(hash, postgres_protocol::password::md5(b"pw", "bob"));
        let salt = [1, 2, 3, 4];
        let expected = postgres_protocol::authentication::md5_hash(b"bob", b"pw", salt);
        assert_eq!(md5_response(&hash, salt), expected);
        assert_eq!(Secret::Md5(hash.clone()).md5_hash("anyone"), Some(hash));
    }
}
