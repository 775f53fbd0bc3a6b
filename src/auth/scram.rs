//! Server-side SCRAM-SHA-256 authentication (RFC 5802 / RFC 7677), sans-IO.
//!
//! This module implements the server half of the SASL exchange that a
//! PostgreSQL client performs when it authenticates with SCRAM-SHA-256 or
//! SCRAM-SHA-256-PLUS, following PostgreSQL's own `auth-scram.c`:
//!
//! 1. The pooler advertises [`ScramServer::mechanisms`] in
//!    `AuthenticationSASL`.
//! 2. The client's `SASLInitialResponse` (mechanism and client-first-message)
//!    goes to [`ScramServer::client_first`], whose result is sent back in
//!    `AuthenticationSASLContinue`.
//! 3. The client's `SASLResponse` (client-final-message) goes to
//!    [`ScramServer::client_final`]. On success its result is sent in
//!    `AuthenticationSASLFinal`; on [`ScramError::InvalidProof`] the client
//!    used the wrong password.
//!
//! Nothing here performs I/O or logs. Every message is treated as untrusted
//! network input: messages are size-bounded, must be UTF-8, and no error
//! text ever contains secrets, proofs or client-supplied bytes (other than a
//! sanitised, truncated mechanism name).

use std::fmt;
use std::mem;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The name of the SCRAM-SHA-256 SASL mechanism (no channel binding).
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The name of the SCRAM-SHA-256-PLUS SASL mechanism (with channel binding).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

type HmacSha256 = Hmac<Sha256>;

/// Length of SHA-256 digests, and so of every SCRAM key, signature and proof.
const KEY_LEN: usize = 32;
/// The largest client message accepted, in bytes.
const MAX_MESSAGE_LEN: usize = 1024;
/// The longest client nonce accepted, so that the echoed nonce always fits
/// in a client-final-message below [`MAX_MESSAGE_LEN`].
const MAX_CLIENT_NONCE_LEN: usize = 512;
/// Raw length of the server nonce before base64 (as PostgreSQL).
const SERVER_NONCE_LEN: usize = 18;
/// Salt length used by [`ScramSecret::from_password`].
const SALT_LEN: usize = 16;
/// Iteration count used by [`ScramSecret::from_password`].
const DEFAULT_ITERATIONS: u32 = 4096;
/// The only channel binding type supported (as PostgreSQL).
const CBIND_TYPE: &str = "tls-server-end-point";
/// Prefix of a SCRAM secret as stored in `pg_authid.rolpassword`.
const SECRET_PREFIX: &str = "SCRAM-SHA-256$";
/// The longest mechanism name echoed back in [`ScramError::UnsupportedMechanism`].
const MAX_MECHANISM_ECHO: usize = 64;

const MECHANISMS: &[&str] = &[SCRAM_SHA_256];
const MECHANISMS_PLUS: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];

/// Errors from parsing a SCRAM secret or from a SCRAM exchange.
///
/// No variant's text includes secrets, keys, salts or proofs.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// A client message is not well-formed (bad syntax, too long, not
    /// UTF-8, wrong nonce, bad encoding). The text is a fixed description.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for a SCRAM feature we do not support (an
    /// authorization identity or a mandatory extension).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The gs2 channel binding flag is inconsistent with the selected
    /// mechanism or with what the server offered (including the "y"
    /// downgrade check).
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBindingNegotiation(&'static str),
    /// The channel binding data in the client-final-message does not match
    /// the gs2 header and binding data expected.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client selected a mechanism we did not offer. The name is
    /// truncated and non-printable characters are replaced by `?`.
    #[error("unsupported SASL mechanism \"{0}\"")]
    UnsupportedMechanism(String),
    /// The client proof is wrong: the client does not know the password.
    #[error("invalid SCRAM proof")]
    InvalidProof,
    /// A method was called in the wrong state of the exchange (or after
    /// the exchange already failed or finished).
    #[error("SCRAM exchange step out of order")]
    OutOfOrder,
    /// A stored SCRAM secret could not be parsed.
    #[error("invalid SCRAM secret: {0}")]
    InvalidSecret(&'static str),
}

/// A SCRAM-SHA-256 secret: what `pg_authid.rolpassword` stores.
///
/// Its [`Debug`](fmt::Debug) implementation only shows the iteration count.
#[derive(Clone)]
pub struct ScramSecret {
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt (raw bytes, not base64).
    pub salt: Vec<u8>,
    /// `StoredKey = H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// A stand-in secret for a user that does not exist, so that the
    /// exchange looks the same as for a real user (PostgreSQL's "mock"
    /// authentication). The salt is derived from `user` and a per-process
    /// random `nonce`, so repeated attempts see the same salt; no proof can
    /// match the random keys. Costs no key derivation.
    pub fn mock(user: &str, nonce: &[u8; 32]) -> ScramSecret {
        let mut h = Sha256::new();
        h.update(nonce);
        h.update(user.as_bytes());
        let digest = h.finalize();
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..SALT_LEN].to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// Derives a secret from a plaintext password with a fresh random
    /// 16-byte salt and 4096 iterations.
    ///
    /// The password is SASLprep-normalised exactly as PostgreSQL does
    /// (through `postgres_protocol::password::scram_sha_256`): if SASLprep
    /// fails (e.g. prohibited characters), the raw bytes are used.
    pub fn from_password(password: &str) -> ScramSecret {
        let encoded = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The encoding above is always well-formed; should that ever change,
        // fall back to deriving from the raw bytes (PostgreSQL's behaviour
        // when SASLprep fails) rather than panicking.
        Self::parse(&encoded).unwrap_or_else(|_| {
            let salt = random_bytes::<SALT_LEN>().to_vec();
            Self::derive(password.as_bytes(), salt, DEFAULT_ITERATIONS)
        })
    }

    /// Parses `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    ///
    /// The iteration count must be positive, the salt non-empty and both
    /// keys exactly 32 bytes.
    ///
    /// # Errors
    ///
    /// [`ScramError::InvalidSecret`] if `s` is not such a secret.
    pub fn parse(s: &str) -> Result<ScramSecret, ScramError> {
        let malformed =
            ScramError::InvalidSecret("expected SCRAM-SHA-256$<iter>:<salt>$<key>:<key>");
        let rest = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(ScramError::InvalidSecret("missing SCRAM-SHA-256$ prefix"))?;
        let Some((params, keys)) = rest.split_once('$') else {
            return Err(malformed);
        };
        let (Some((iterations, salt)), Some((stored_key, server_key))) =
            (params.split_once(':'), keys.split_once(':'))
        else {
            return Err(malformed);
        };
        Ok(ScramSecret {
            iterations: parse_iterations(iterations)?,
            salt: parse_salt(salt)?,
            stored_key: parse_key(stored_key)?,
            server_key: parse_key(server_key)?,
        })
    }

    /// Derives a secret from already-normalised password bytes.
    fn derive(password: &[u8], salt: Vec<u8>, iterations: u32) -> ScramSecret {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramSecret {
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
            salt,
        }
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn parse_iterations(s: &str) -> Result<u32, ScramError> {
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(ScramError::InvalidSecret("invalid iteration count")),
        Ok(n) => Ok(n),
    }
}

fn parse_salt(s: &str) -> Result<Vec<u8>, ScramError> {
    match STANDARD.decode(s) {
        Ok(salt) if !salt.is_empty() => Ok(salt),
        Ok(_) | Err(_) => Err(ScramError::InvalidSecret("invalid salt")),
    }
}

fn parse_key(s: &str) -> Result<[u8; KEY_LEN], ScramError> {
    STANDARD
        .decode(s)
        .ok()
        .and_then(|key| <[u8; KEY_LEN]>::try_from(key).ok())
        .ok_or(ScramError::InvalidSecret("invalid key"))
}

/// How the client is (or is not) using channel binding on this connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// No channel binding is possible (the client is not on TLS).
    None,
    /// The client is on TLS: the tls-server-end-point hash of our
    /// certificate (RFC 5929), which SCRAM-SHA-256-PLUS clients bind to.
    TlsServerEndPoint(Vec<u8>),
}

/// The server side of one SCRAM-SHA-256(-PLUS) exchange.
///
/// A state machine: awaiting the client-first-message, then the
/// client-final-message, then done. Any error ends the exchange; further
/// calls return [`ScramError::OutOfOrder`].
pub struct ScramServer {
    secret: ScramSecret,
    binding: ChannelBinding,
    server_nonce: String,
    state: State,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Exchange),
    /// `client_key` is `Some` only if the client proved it knows the password.
    Done {
        client_key: Option<[u8; KEY_LEN]>,
    },
}

/// What the client-final-message is checked against.
struct Exchange {
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    /// The exact gs2 header the client sent, plus binding data for "p=".
    cbind_input: Vec<u8>,
}

impl ScramServer {
    /// Starts an exchange for `secret`, generating an 18-byte random server
    /// nonce (sent base64-encoded).
    pub fn new(secret: ScramSecret, binding: ChannelBinding) -> ScramServer {
        let nonce = STANDARD.encode(random_bytes::<SERVER_NONCE_LEN>());
        Self::with_nonce(secret, binding, nonce)
    }

    /// Starts an exchange with a fixed server nonce (for test vectors).
    #[cfg(test)]
    fn with_server_nonce(secret: ScramSecret, binding: ChannelBinding, nonce: &str) -> Self {
        Self::with_nonce(secret, binding, nonce.to_owned())
    }

    fn with_nonce(secret: ScramSecret, binding: ChannelBinding, server_nonce: String) -> Self {
        ScramServer {
            secret,
            binding,
            server_nonce,
            state: State::AwaitingClientFirst,
        }
    }

    /// The mechanisms to advertise in `AuthenticationSASL`:
    /// `["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]` when the binding is
    /// [`ChannelBinding::TlsServerEndPoint`], else `["SCRAM-SHA-256"]`.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self.binding {
            ChannelBinding::None => MECHANISMS,
            ChannelBinding::TlsServerEndPoint(_) => MECHANISMS_PLUS,
        }
    }

    /// Handles `SASLInitialResponse`: the selected `mechanism` and the
    /// client-first-message `data`. Returns the server-first-message.
    ///
    /// # Errors
    ///
    /// [`ScramError::OutOfOrder`] unless this is the first call;
    /// [`ScramError::UnsupportedMechanism`] for a mechanism not in
    /// [`mechanisms`](Self::mechanisms); [`ScramError::Malformed`],
    /// [`ScramError::Unsupported`] or
    /// [`ScramError::ChannelBindingNegotiation`] for a bad message. After an
    /// error the exchange is over.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        match mem::replace(&mut self.state, State::Done { client_key: None }) {
            State::AwaitingClientFirst => {}
            State::AwaitingClientFinal(_) | State::Done { .. } => {
                return Err(ScramError::OutOfOrder);
            }
        }
        let exchange = self.start_exchange(mechanism, data)?;
        let reply = exchange.server_first.clone().into_bytes();
        self.state = State::AwaitingClientFinal(exchange);
        Ok(reply)
    }

    /// Handles `SASLResponse`: the client-final-message. On a correct proof
    /// returns the server-final-message (`v=<ServerSignature>`), to be sent
    /// in `AuthenticationSASLFinal`.
    ///
    /// # Errors
    ///
    /// [`ScramError::OutOfOrder`] unless [`client_first`](Self::client_first)
    /// succeeded just before; [`ScramError::Malformed`] for a bad message or
    /// wrong nonce; [`ScramError::ChannelBindingMismatch`] if `c=` is not the
    /// expected gs2 header and binding data; [`ScramError::InvalidProof`] if
    /// the client does not know the password. The exchange is over either way.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let exchange = match mem::replace(&mut self.state, State::Done { client_key: None }) {
            State::AwaitingClientFinal(exchange) => exchange,
            State::AwaitingClientFirst | State::Done { .. } => {
                return Err(ScramError::OutOfOrder);
            }
        };
        let (client_key, reply) = self.finish_exchange(&exchange, data)?;
        self.state = State::Done {
            client_key: Some(client_key),
        };
        Ok(reply)
    }

    /// The ClientKey recovered from a successful proof, or `None` if the
    /// exchange has not (yet) succeeded.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            State::Done { client_key } => client_key,
            State::AwaitingClientFirst | State::AwaitingClientFinal(_) => None,
        }
    }

    fn start_exchange(&self, mechanism: &str, data: &[u8]) -> Result<Exchange, ScramError> {
        let plus = self.select_mechanism(mechanism)?;
        let first = parse_client_first(as_message(data)?)?;
        let cbind_input = self.cbind_input(first.flag, plus)?;
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        );
        Ok(Exchange {
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
            cbind_input,
        })
    }

    /// Returns whether the (offered) mechanism is the -PLUS variant.
    fn select_mechanism(&self, mechanism: &str) -> Result<bool, ScramError> {
        if !self.mechanisms().contains(&mechanism) {
            return Err(ScramError::UnsupportedMechanism(sanitize(mechanism)));
        }
        Ok(mechanism == SCRAM_SHA_256_PLUS)
    }

    /// Checks the gs2 flag against the mechanism and our binding; returns
    /// the bytes the client must send base64-encoded in `c=`.
    fn cbind_input(&self, flag: Gs2Flag, plus: bool) -> Result<Vec<u8>, ScramError> {
        let negotiation = ScramError::ChannelBindingNegotiation;
        match (flag, &self.binding) {
            (Gs2Flag::Binding, ChannelBinding::TlsServerEndPoint(data)) if plus => {
                Ok([flag.header().as_bytes(), data.as_slice()].concat())
            }
            (Gs2Flag::Binding, _) => Err(negotiation(
                "channel binding data sent without selecting SCRAM-SHA-256-PLUS",
            )),
            (Gs2Flag::NotSupported | Gs2Flag::ClientOnly, _) if plus => Err(negotiation(
                "SCRAM-SHA-256-PLUS selected but no channel binding data sent",
            )),
            (Gs2Flag::ClientOnly, ChannelBinding::TlsServerEndPoint(_)) => Err(negotiation(
                "client supports channel binding but thinks the server does not",
            )),
            (Gs2Flag::NotSupported | Gs2Flag::ClientOnly, _) => Ok(flag.header().into()),
        }
    }

    fn finish_exchange(
        &self,
        exchange: &Exchange,
        data: &[u8],
    ) -> Result<([u8; KEY_LEN], Vec<u8>), ScramError> {
        let fin = parse_client_final(as_message(data)?)?;
        check_cbind(fin.cbind, &exchange.cbind_input)?;
        if fin.nonce != exchange.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let auth_message = [
            exchange.client_first_bare.as_bytes(),
            exchange.server_first.as_bytes(),
            fin.without_proof.as_bytes(),
        ]
        .join(&b","[..]);
        let client_key = verify_proof(&self.secret, &auth_message, &fin.proof)?;
        let server_signature = hmac_sha256(&self.secret.server_key, &[&auth_message]);
        let reply = format!("v={}", STANDARD.encode(server_signature));
        Ok((client_key, reply.into_bytes()))
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "AwaitingClientFirst",
            State::AwaitingClientFinal(_) => "AwaitingClientFinal",
            State::Done {
                client_key: Some(_),
            } => "Done(authenticated)",
            State::Done { client_key: None } => "Done(failed)",
        };
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .field("binding", &self.binding)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The gs2 channel binding flag of a client-first-message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gs2Flag {
    /// "n": the client does not support channel binding.
    NotSupported,
    /// "y": the client supports it but thinks the server does not.
    ClientOnly,
    /// "p=tls-server-end-point": the client uses channel binding.
    Binding,
}

impl Gs2Flag {
    /// The full gs2 header (authzid is always empty: we reject it).
    fn header(self) -> &'static str {
        match self {
            Gs2Flag::NotSupported => "n,,",
            Gs2Flag::ClientOnly => "y,,",
            Gs2Flag::Binding => "p=tls-server-end-point,,",
        }
    }
}

/// A parsed client-first-message, borrowing from the input.
struct ClientFirst<'a> {
    flag: Gs2Flag,
    bare: &'a str,
    client_nonce: &'a str,
}

/// A parsed client-final-message, borrowing from the input.
struct ClientFinal<'a> {
    cbind: &'a str,
    nonce: &'a str,
    without_proof: &'a str,
    proof: [u8; KEY_LEN],
}

/// Bounds the size of a client message and requires UTF-8.
fn as_message(data: &[u8]) -> Result<&str, ScramError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(data).map_err(|_| ScramError::Malformed("message is not valid UTF-8"))
}

/// Parses `gs2-cbind-flag "," [authzid] "," client-first-message-bare`.
fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, ScramError> {
    let missing = ScramError::Malformed("missing gs2 header");
    let Some((flag, rest)) = msg.split_once(',') else {
        return Err(missing);
    };
    let flag = parse_gs2_flag(flag)?;
    let Some((authzid, bare)) = rest.split_once(',') else {
        return Err(missing);
    };
    if authzid.starts_with("a=") {
        return Err(ScramError::Unsupported("authorization identity"));
    }
    if !authzid.is_empty() {
        return Err(ScramError::Malformed("unexpected attribute in gs2 header"));
    }
    let client_nonce = parse_client_first_bare(bare)?;
    Ok(ClientFirst {
        flag,
        bare,
        client_nonce,
    })
}

fn parse_gs2_flag(flag: &str) -> Result<Gs2Flag, ScramError> {
    match flag {
        "n" => Ok(Gs2Flag::NotSupported),
        "y" => Ok(Gs2Flag::ClientOnly),
        _ => match flag.strip_prefix("p=") {
            Some(CBIND_TYPE) => Ok(Gs2Flag::Binding),
            Some(_) => Err(ScramError::ChannelBindingNegotiation(
                "unsupported channel binding type",
            )),
            None => Err(ScramError::Malformed("invalid channel binding flag")),
        },
    }
}

/// Parses `[m=...,] n=<user>,r=<nonce>[,extensions]`; returns the nonce.
///
/// The user name is ignored (PostgreSQL uses the startup packet's), and
/// optional extensions are ignored after a syntax check, as PostgreSQL does.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attrs = bare.split(',');
    let user = attrs.next();
    if user.is_some_and(|u| u.starts_with("m=")) {
        return Err(ScramError::Unsupported("mandatory extension"));
    }
    attribute(user, "n=", "missing user name attribute")?;
    let nonce = attribute(attrs.next(), "r=", "missing nonce attribute")?;
    check_client_nonce(nonce)?;
    attrs.try_for_each(check_extension)?;
    Ok(nonce)
}

/// Parses `c=<cbind>,r=<nonce>[,extensions],p=<proof>`.
fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, ScramError> {
    let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
        return Err(ScramError::Malformed("missing proof attribute"));
    };
    let mut attrs = without_proof.split(',');
    let cbind = attribute(attrs.next(), "c=", "missing channel binding attribute")?;
    let nonce = attribute(attrs.next(), "r=", "missing nonce attribute")?;
    attrs.try_for_each(|ext| {
        if ext.starts_with("p=") {
            return Err(ScramError::Malformed("duplicate proof attribute"));
        }
        check_extension(ext)
    })?;
    Ok(ClientFinal {
        cbind,
        nonce,
        without_proof,
        proof: decode_proof(proof)?,
    })
}

/// Returns the value of `part` if it starts with `prefix` (e.g. `"r="`).
pub(crate) fn attribute<'a>(
    part: Option<&'a str>,
    prefix: &'static str,
    error: &'static str,
) -> Result<&'a str, ScramError> {
    part.and_then(|p| p.strip_prefix(prefix))
        .ok_or(ScramError::Malformed(error))
}

/// A client nonce is non-empty printable ASCII without ','.
fn check_client_nonce(nonce: &str) -> Result<(), ScramError> {
    let printable = |b: &u8| (0x21..=0x7e).contains(b) && *b != b',';
    if nonce.is_empty() || nonce.len() > MAX_CLIENT_NONCE_LEN {
        return Err(ScramError::Malformed("invalid nonce length"));
    }
    if !nonce.as_bytes().iter().all(printable) {
        return Err(ScramError::Malformed("non-printable character in nonce"));
    }
    Ok(())
}

/// An optional extension must look like `<letter>=<value>`.
fn check_extension(ext: &str) -> Result<(), ScramError> {
    let mut chars = ext.chars();
    match (chars.next(), chars.next()) {
        (Some(name), Some('=')) if name.is_ascii_alphabetic() => Ok(()),
        _ => Err(ScramError::Malformed("invalid attribute")),
    }
}

fn decode_proof(proof: &str) -> Result<[u8; KEY_LEN], ScramError> {
    let bytes = STANDARD
        .decode(proof)
        .map_err(|_| ScramError::Malformed("invalid proof encoding"))?;
    <[u8; KEY_LEN]>::try_from(bytes).map_err(|_| ScramError::Malformed("invalid proof length"))
}

/// Checks `c=` against the gs2 header (and binding data) expected.
fn check_cbind(cbind: &str, expected: &[u8]) -> Result<(), ScramError> {
    let decoded = STANDARD
        .decode(cbind)
        .map_err(|_| ScramError::Malformed("invalid channel binding encoding"))?;
    if decoded != expected {
        return Err(ScramError::ChannelBindingMismatch);
    }
    Ok(())
}

/// Verifies `proof`; on success returns the recovered ClientKey.
fn verify_proof(
    secret: &ScramSecret,
    auth_message: &[u8],
    proof: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], ScramError> {
    let signature = hmac_sha256(&secret.stored_key, &[auth_message]);
    let client_key = xor(proof, &signature);
    let computed = sha256(&client_key);
    if bool::from(computed.as_slice().ct_eq(secret.stored_key.as_slice())) {
        Ok(client_key)
    } else {
        Err(ScramError::InvalidProof)
    }
}

/// `Hi(password, salt, i)` from RFC 5802 (PBKDF2-HMAC-SHA-256, one block).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mac = new_mac(password);
    let first = mac
        .clone()
        .chain_update(salt)
        .chain_update(1u32.to_be_bytes());
    let mut prev: [u8; KEY_LEN] = first.finalize().into_bytes().into();
    let mut result = prev;
    for _ in 1..iterations {
        prev = mac
            .clone()
            .chain_update(prev)
            .finalize()
            .into_bytes()
            .into();
        result = xor(&result, &prev);
    }
    result
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length (long keys are hashed first), so
    // this cannot fail whatever the input.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = new_mac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

pub(crate) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Makes a client-supplied mechanism name safe to show in an error.
fn sanitize(mechanism: &str) -> String {
    mechanism
        .chars()
        .take(MAX_MECHANISM_ECHO)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding as ClientBinding, ScramSha256};

    const PASSWORD: &str = "correct horse battery staple";

    // RFC 7677 section 3 test vector.
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// The secret for [`PASSWORD`], derived once (Hi is slow in debug builds).
    fn secret() -> ScramSecret {
        static SECRET: std::sync::OnceLock<ScramSecret> = std::sync::OnceLock::new();
        SECRET
            .get_or_init(|| {
                ScramSecret::derive(PASSWORD.as_bytes(), b"0123456789abcdef".to_vec(), 4096)
            })
            .clone()
    }

    fn rfc_secret() -> ScramSecret {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramSecret::derive(b"pencil", salt, 4096)
    }

    fn rfc_server(secret: &ScramSecret) -> ScramServer {
        ScramServer::with_server_nonce(secret.clone(), ChannelBinding::None, RFC_SERVER_NONCE)
    }

    /// Runs a full exchange; panics if the client rejects the server.
    fn exchange(
        server: &mut ScramServer,
        client: &mut ScramSha256,
        mechanism: &str,
    ) -> Result<(), ScramError> {
        let server_first = server.client_first(mechanism, client.message())?;
        client
            .update(&server_first)
            .expect("client accepts server-first");
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client accepts server-final");
        Ok(())
    }

    fn server_awaiting_final(first: &str) -> ScramServer {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        server
            .client_first(SCRAM_SHA_256, first.as_bytes())
            .unwrap();
        server
    }

    #[test]
    fn full_exchange_with_postgres_protocol_client() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        assert_eq!(server.mechanisms(), &["SCRAM-SHA-256"]);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unsupported());
        exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
        assert!(server.client_key().is_some());
    }

    #[test]
    fn client_key_is_recovered_after_success() {
        let salt = b"0123456789abcdef";
        let salted = salted_password(PASSWORD.as_bytes(), salt, 4096);
        let expected = hmac_sha256(&salted, &[b"Client Key"]);
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        assert_eq!(server.client_key(), None);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unsupported());
        exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
        assert_eq!(server.client_key(), Some(expected));
    }

    #[test]
    fn wrong_password_is_invalid_proof() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let mut client = ScramSha256::new(b"wrong password", ClientBinding::unsupported());
        let err = exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap_err();
        assert!(matches!(err, ScramError::InvalidProof), "{err:?}");
        assert_eq!(server.client_key(), None);
        assert!(matches!(
            server.client_final(client.message()),
            Err(ScramError::OutOfOrder)
        ));
    }

    #[test]
    fn postgres_protocol_verifier_parses_and_authenticates() {
        let verifier = postgres_protocol::password::scram_sha_256(PASSWORD.as_bytes());
        let parsed = ScramSecret::parse(&verifier).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        let mut server = ScramServer::new(parsed, ChannelBinding::None);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unsupported());
        exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
    }

    #[test]
    fn from_password_authenticates_including_non_ascii() {
        for password in [PASSWORD, "pässwörd\u{00A0}ﬁ", "tab\there"] {
            let secret = ScramSecret::from_password(password);
            assert_eq!((secret.iterations, secret.salt.len()), (4096, 16));
            let mut server = ScramServer::new(secret, ChannelBinding::None);
            let mut client = ScramSha256::new(password.as_bytes(), ClientBinding::unsupported());
            exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
        }
    }

    #[test]
    fn channel_binding_plus_succeeds() {
        let hash = vec![7u8; 32];
        let mut server =
            ScramServer::new(secret(), ChannelBinding::TlsServerEndPoint(hash.clone()));
        assert_eq!(
            server.mechanisms(),
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        let mut client = ScramSha256::new(
            PASSWORD.as_bytes(),
            ClientBinding::tls_server_end_point(hash),
        );
        exchange(&mut server, &mut client, SCRAM_SHA_256_PLUS).unwrap();
        assert!(server.client_key().is_some());
    }

    #[test]
    fn channel_binding_different_hash_is_mismatch() {
        let binding = ChannelBinding::TlsServerEndPoint(vec![7u8; 32]);
        let mut server = ScramServer::new(secret(), binding);
        let client_binding = ClientBinding::tls_server_end_point(vec![8u8; 32]);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), client_binding);
        let err = exchange(&mut server, &mut client, SCRAM_SHA_256_PLUS).unwrap_err();
        assert!(matches!(err, ScramError::ChannelBindingMismatch), "{err:?}");
    }

    #[test]
    fn tls_client_without_binding_may_use_plain_mechanism() {
        let binding = ChannelBinding::TlsServerEndPoint(vec![7u8; 32]);
        let mut server = ScramServer::new(secret(), binding);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unsupported());
        exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
    }

    #[test]
    fn y_flag_accepted_when_plus_not_offered() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unrequested());
        exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap();
    }

    #[test]
    fn y_flag_rejected_when_plus_offered() {
        let binding = ChannelBinding::TlsServerEndPoint(vec![7u8; 32]);
        let mut server = ScramServer::new(secret(), binding);
        let err = server
            .client_first(SCRAM_SHA_256, b"y,,n=,r=abcdef")
            .unwrap_err();
        assert!(
            matches!(err, ScramError::ChannelBindingNegotiation(_)),
            "{err:?}"
        );
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unrequested());
        let mut server = ScramServer::new(secret(), ChannelBinding::TlsServerEndPoint(vec![1]));
        let err = exchange(&mut server, &mut client, SCRAM_SHA_256).unwrap_err();
        assert!(
            matches!(err, ScramError::ChannelBindingNegotiation(_)),
            "{err:?}"
        );
    }

    #[test]
    fn mechanism_and_gs2_flag_must_agree() {
        let tls = || ScramServer::new(secret(), ChannelBinding::TlsServerEndPoint(vec![7u8; 32]));
        let plain = || ScramServer::new(secret(), ChannelBinding::None);
        let p = b"p=tls-server-end-point,,n=,r=abc";
        let cases: [(ScramServer, &str, &[u8]); 5] = [
            (tls(), SCRAM_SHA_256_PLUS, b"n,,n=,r=abc"),
            (tls(), SCRAM_SHA_256_PLUS, b"y,,n=,r=abc"),
            (tls(), SCRAM_SHA_256, p),
            (plain(), SCRAM_SHA_256, p),
            (tls(), SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc"),
        ];
        for (mut server, mechanism, data) in cases {
            let err = server.client_first(mechanism, data).unwrap_err();
            assert!(
                matches!(err, ScramError::ChannelBindingNegotiation(_)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn unsupported_mechanisms_are_rejected() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let err = server.client_first(SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=a");
        assert!(matches!(err, Err(ScramError::UnsupportedMechanism(_))));
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let long = format!("MD5\n{}", "x".repeat(1000));
        match server.client_first(&long, b"n,,n=,r=a") {
            Err(ScramError::UnsupportedMechanism(name)) => {
                assert_eq!(name.len(), MAX_MECHANISM_ECHO);
                assert!(name.starts_with("MD5?x"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_client_first_is_rejected() {
        let oversized = format!("n,,n=,r={}", "a".repeat(MAX_MESSAGE_LEN));
        let long_nonce = format!("n,,n=,r={}", "a".repeat(MAX_CLIENT_NONCE_LEN + 1));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=user",
            b"n,,n=user,",
            b"n,,n=user,r=",
            b"n,,r=abc",
            b"n,,n=user,x=abc",
            b"x,,n=,r=abc",
            b"n,x,n=,r=abc",
            b"n,,n=,r=ab\x01c",
            b"n,,n=,r=ab c",
            b"n,,n=,r=abc,1=x",
            b"n,,n=,r=abc,bad",
            b"n,,n=\xff\xfe,r=abc",
            b"\xc3\x28,,n=,r=abc",
            oversized.as_bytes(),
            long_nonce.as_bytes(),
        ];
        for data in cases {
            let mut server = ScramServer::new(secret(), ChannelBinding::None);
            let err = server.client_first(SCRAM_SHA_256, data).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{data:?}: {err:?}");
            assert_eq!(server.client_key(), None);
        }
    }

    #[test]
    fn authzid_and_mandatory_extensions_are_unsupported() {
        for data in [&b"n,a=admin,n=,r=abc"[..], b"n,,m=ext,n=,r=abc"] {
            let mut server = ScramServer::new(secret(), ChannelBinding::None);
            let err = server.client_first(SCRAM_SHA_256, data).unwrap_err();
            assert!(matches!(err, ScramError::Unsupported(_)), "{err:?}");
        }
    }

    #[test]
    fn optional_extensions_and_any_user_name_are_accepted() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let reply = server
            .client_first(SCRAM_SHA_256, b"n,,n=some=2Cone,r=abc,x=ext")
            .unwrap();
        assert!(reply.starts_with(b"r=abc"));
    }

    #[test]
    fn malformed_client_final_is_rejected() {
        let first = "n,,n=,r=abc";
        let oversized = format!("c=biws,r=abc,p={}", "A".repeat(MAX_MESSAGE_LEN));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"c=biws",
            b"c=biws,r=abc",
            b"r=abc,p=AAAA",
            b"c=biws,p=AAAA",
            b"c=biws,r=abc,p=",
            b"c=biws,r=abc,p=not base64!",
            b"c=biws,r=abc,p=AAAA",
            b"c=biws,r=abc,p=AAAA,x=1",
            b"c=biws,r=abc,p=AAAA,p=AAAA",
            b"c=bi\xffws,r=abc,p=AAAA",
            b"c=***,r=abc,p=AAAA",
            oversized.as_bytes(),
        ];
        for data in cases {
            let mut server = server_awaiting_final(first);
            let err = server.client_final(data).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{data:?}: {err:?}");
        }
    }

    #[test]
    fn wrong_nonce_is_rejected() {
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ClientBinding::unsupported());
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let server_first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        let mut other = ScramServer::new(secret(), ChannelBinding::None);
        other.client_first(SCRAM_SHA_256, client.message()).unwrap();
        client.update(&server_first).unwrap();
        let err = other.client_final(client.message()).unwrap_err();
        assert!(matches!(err, ScramError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn c_attribute_must_match_client_gs2_header() {
        // The client sent "n,," but claims "y,," (base64 "eSws") in c=.
        let mut server = server_awaiting_final("n,,n=,r=abc");
        let nonce = format!("abc{}", server.server_nonce);
        let proof = STANDARD.encode([0u8; 32]);
        let data = format!("c=eSws,r={nonce},p={proof}");
        let err = server.client_final(data.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::ChannelBindingMismatch), "{err:?}");
    }

    #[test]
    fn calls_out_of_order_are_rejected() {
        let mut server = ScramServer::new(secret(), ChannelBinding::None);
        let err = server.client_final(b"c=biws,r=abc,p=AAAA").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder));
        let mut server = server_awaiting_final("n,,n=,r=abc");
        let err = server
            .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
            .unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder));
        let err = server.client_final(b"c=biws,r=abc,p=AAAA").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder));
    }

    #[test]
    fn rfc7677_test_vector() {
        let mut server = rfc_server(&rfc_secret());
        let first = server
            .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), RFC_SERVER_FIRST);
        let last = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&last).unwrap(), RFC_SERVER_FINAL);
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        assert_eq!(server.client_key(), Some(client_key));
    }

    #[test]
    fn every_truncation_and_byte_flip_of_client_final_fails() {
        let full = RFC_CLIENT_FINAL.as_bytes();
        let mut variants: Vec<Vec<u8>> = (0..full.len()).map(|n| full[..n].to_vec()).collect();
        for i in 0..full.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut bytes = full.to_vec();
                bytes[i] ^= mask;
                variants.push(bytes);
            }
        }
        let secret = rfc_secret();
        for data in variants {
            let mut server = rfc_server(&secret);
            server
                .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
                .unwrap();
            assert!(server.client_final(&data).is_err(), "{data:?}");
            assert_eq!(server.client_key(), None);
        }
    }

    #[test]
    fn truncated_client_first_never_panics() {
        let full = b"p=tls-server-end-point,,n=user,r=abcdef,x=1";
        for n in 0..=full.len() {
            for mechanism in [SCRAM_SHA_256, SCRAM_SHA_256_PLUS] {
                let binding = ChannelBinding::TlsServerEndPoint(vec![1, 2, 3]);
                let mut server = ScramServer::new(secret(), binding);
                let _ = server.client_first(mechanism, &full[..n]);
            }
        }
    }

    #[test]
    fn secret_parse_round_trip_and_errors() {
        let text = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
                    AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:\
                    AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let secret = ScramSecret::parse(text).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!((secret.stored_key, secret.server_key), ([0; 32], [1; 32]));
        let bad = [
            "",
            "md5abc",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
        ];
        for s in bad {
            let err = ScramSecret::parse(s).unwrap_err();
            assert!(matches!(err, ScramError::InvalidSecret(_)), "{s}: {err:?}");
        }
    }

    #[test]
    fn mock_secrets_have_a_stable_salt_per_user_and_never_authenticate() {
        let nonce = [7u8; 32];
        let a = ScramSecret::mock("eve", &nonce);
        assert_eq!(
            a.salt,
            ScramSecret::mock("eve", &nonce).salt,
            "same salt on every attempt"
        );
        assert_ne!(a.salt, ScramSecret::mock("mallory", &nonce).salt);
        let mut client = ScramSha256::new(b"anything", ClientBinding::unsupported());
        let mut server = ScramServer::new(a, ChannelBinding::None);
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        assert!(matches!(
            server.client_final(client.message()),
            Err(ScramError::InvalidProof)
        ));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let secret = ScramSecret::parse(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:\
             AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        )
        .unwrap();
        let text = format!("{secret:?}");
        assert_eq!(text, "ScramSecret { iterations: 4096, .. }");
        let server = format!("{:?}", ScramServer::new(secret, ChannelBinding::None));
        assert!(
            !server.contains("salt") && !server.contains("key"),
            "{server}"
        );
    }
}
