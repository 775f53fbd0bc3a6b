//! The client side of SCRAM-SHA-256 from keys instead of a password, sans-IO:
//! SCRAM passthrough.
//!
//! When a user's only configured secret is a SCRAM verifier, pgtarn cannot
//! answer Postgres' SCRAM challenge with a password. But a client that
//! logged in to pgtarn with SCRAM revealed its ClientKey (recovered from its
//! proof), and the verifier holds the ServerKey; with both, pgtarn can log
//! in upstream as that user. This works when Postgres stores the *same*
//! verifier (same salt and iteration count) — e.g. when pgtarn's verifier was
//! copied from `pg_authid`, or fetched with `auth_query`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::scram::{ScramError, attribute, hmac_sha256, random_bytes, sha256, xor};

/// The keys SCRAM passthrough needs.
#[derive(Clone, Copy)]
pub struct ScramKeys {
    /// ClientKey, recovered from a client's proof.
    pub client_key: [u8; 32],
    /// ServerKey, from the verifier.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(redacted)")
    }
}

/// One SCRAM exchange as the client.
#[derive(Debug)]
pub struct PassthroughClient {
    keys: ScramKeys,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl PassthroughClient {
    /// Starts an exchange with a fresh nonce.
    pub fn new(keys: ScramKeys) -> Self {
        let nonce = STANDARD.encode(random_bytes::<18>());
        PassthroughClient {
            keys,
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            auth_message: None,
        }
    }

    /// The client-first-message (no channel binding).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg =
            std::str::from_utf8(data).map_err(|_| ScramError::Malformed("server-first-message"))?;
        let mut parts = msg.split(',');
        let nonce = attribute(parts.next(), "r=", "server-first-message without nonce")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&self.keys.client_key, &signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message's signature.
    pub fn server_final(&self, data: &[u8]) -> Result<(), ScramError> {
        let auth_message = self.auth_message.as_ref().ok_or(ScramError::OutOfOrder)?;
        let msg =
            std::str::from_utf8(data).map_err(|_| ScramError::Malformed("server-final-message"))?;
        let v = attribute(Some(msg), "v=", "server-final-message without signature")?;
        let got = STANDARD
            .decode(v)
            .map_err(|_| ScramError::Malformed("server signature"))?;
        let expected = hmac_sha256(&self.keys.server_key, &[auth_message.as_bytes()]);
        if bool::from(got.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramError::InvalidProof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ChannelBinding, SCRAM_SHA_256, ScramSecret, ScramServer};

    /// Logs in to a pgtarn SCRAM server with a password to learn the
    /// ClientKey, as happens when a real client logs in.
    fn client_key_for(secret: &ScramSecret, password: &str) -> [u8; 32] {
        use postgres_protocol::authentication::sasl::{ChannelBinding as B, ScramSha256};
        let mut server = ScramServer::new(secret.clone(), ChannelBinding::None);
        let mut client = ScramSha256::new(password.as_bytes(), B::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        server.client_final(client.message()).unwrap();
        server.client_key().unwrap()
    }

    #[test]
    fn passthrough_logs_in_to_a_server_with_the_same_verifier() {
        let secret = ScramSecret::from_password("pw");
        let keys = ScramKeys {
            client_key: client_key_for(&secret, "pw"),
            server_key: secret.server_key,
        };
        let mut upstream = ScramServer::new(secret, ChannelBinding::None);
        let mut client = PassthroughClient::new(keys);
        let first = upstream
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let last = client.server_first(&first).unwrap();
        let fin = upstream
            .client_final(&last)
            .expect("upstream accepts the proof");
        client
            .server_final(&fin)
            .expect("and we accept its signature");
    }

    #[test]
    fn a_different_verifier_upstream_fails() {
        let ours = ScramSecret::from_password("pw");
        let keys = ScramKeys {
            client_key: client_key_for(&ours, "pw"),
            server_key: ours.server_key,
        };
        let theirs = ScramSecret::from_password("pw");
        let mut upstream = ScramServer::new(theirs, ChannelBinding::None);
        let mut client = PassthroughClient::new(keys);
        let first = upstream
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let last = client.server_first(&first).unwrap();
        assert!(
            upstream.client_final(&last).is_err(),
            "different salt: different ClientKey"
        );
    }

    #[test]
    fn rejects_bad_server_messages() {
        let keys = ScramKeys {
            client_key: [1; 32],
            server_key: [2; 32],
        };
        let mut c = PassthroughClient::new(keys);
        assert!(c.server_final(b"v=AAAA").is_err(), "out of order");
        assert!(c.server_first(b"r=someone-else,s=AAAA,i=4096").is_err());
        assert!(c.server_first(b"\xff").is_err());
        let ours = c.nonce.clone();
        c.server_first(format!("r={ours}xyz,s=AAAA,i=4096").as_bytes())
            .unwrap();
        assert!(c.server_final(b"v=AAAA").is_err(), "wrong signature");
        assert!(c.server_final(b"e=bad").is_err());
    }
}
