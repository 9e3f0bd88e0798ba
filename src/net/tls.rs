//! TLS with rustls: the server's certificate and key, client certificates,
//! cipher suites and protocol versions, checked once at startup so that a
//! wrong file or password is one clear line before anything listens.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CipherSuite, RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
};

/// Whether clients must present a certificate (`--ssl-cert-reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ClientCerts {
    #[default]
    None,
    Optional,
    Required,
}

impl ClientCerts {
    /// Parses uvicorn's names or gunicorn's numbers (Python's `ssl.CERT_*`).
    pub(crate) fn parse(raw: &str) -> Result<ClientCerts, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "none" | "0" | "cert_none" => Ok(ClientCerts::None),
            "optional" | "1" | "cert_optional" => Ok(ClientCerts::Optional),
            "required" | "2" | "cert_required" => Ok(ClientCerts::Required),
            _ => Err(format!(
                "expected none, optional or required (or 0, 1, 2), got {raw:?}"
            )),
        }
    }
}

/// The oldest TLS version accepted (`--ssl-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl MinVersion {
    pub(crate) fn parse(raw: &str) -> Result<MinVersion, String> {
        match raw.trim().to_ascii_lowercase().trim_start_matches("tlsv") {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            _ => Err(format!("expected 1.2 or 1.3, got {raw:?}")),
        }
    }
}

impl fmt::Display for MinVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MinVersion::Tls12 => "1.2",
            MinVersion::Tls13 => "1.3",
        })
    }
}

/// The TLS options as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub certfile: PathBuf,
    pub keyfile: Option<PathBuf>,
    pub password: Option<String>,
    pub ca_certs: Option<PathBuf>,
    pub client_certs: ClientCerts,
    /// rustls suite names; `None`: rustls's defaults.
    pub ciphers: Option<String>,
    pub min_version: MinVersion,
}

const NO_CA: &str =
    "--ssl-cert-reqs optional or required needs --ssl-ca-certs, the CA that signs client certificates";

/// Protocols offered by ALPN, best first.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A worker's TLS side: rustls's configuration and the certificate the
/// ASGI `tls` extension reports.
pub(crate) struct TlsServer {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub server_cert: Arc<str>,
}

impl TlsSettings {
    /// Reads the files, for a worker.
    pub(crate) fn load(&self, alpn: &[&[u8]]) -> Result<TlsServer, String> {
        let (config, server_cert) = self.build(alpn)?;
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            server_cert: Arc::from(server_cert),
        })
    }

    /// Reads the files and builds rustls's configuration; the error is one
    /// line naming the option, the file and what is wrong with it.
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        self.build(alpn).map(|(config, _)| config)
    }

    fn build(&self, alpn: &[&[u8]]) -> Result<(Arc<ServerConfig>, String), String> {
        let provider = Arc::new(self.provider()?);
        let chain = load_certificates(&self.certfile, "--ssl-certfile")?;
        let server_cert = pem_of(&chain[0]);
        let (key_path, key_option) = match &self.keyfile {
            Some(path) => (path.as_path(), "--ssl-keyfile"),
            // A PEM bundle with both, as gunicorn and uvicorn accept.
            None => (self.certfile.as_path(), "--ssl-certfile"),
        };
        let key = load_key(key_path, key_option, self.password.as_deref())?;
        let versions = self.versions();
        if let Some(ciphers) = &self.ciphers {
            // A TLS 1.2 suite names the kind of key it signs with
            // (ECDHE-RSA-…): with none that fits this key, and no TLS 1.3
            // suite, every handshake would fail.
            if let Ok(signing) = provider.key_provider.load_private_key(key.clone_key()) {
                let algorithm = signing.algorithm();
                // Suites of none of the versions allowed are the version
                // check's to report (below), not a matter of the key.
                let allowed: Vec<&SupportedCipherSuite> = provider
                    .cipher_suites
                    .iter()
                    .filter(|suite| {
                        versions
                            .iter()
                            .any(|version| version.version == suite.version().version)
                    })
                    .collect();
                let usable = allowed
                    .iter()
                    .any(|suite| suite.usable_for_signature_algorithm(algorithm));
                if !allowed.is_empty() && !usable {
                    return Err(format!(
                        "--ssl-ciphers {ciphers:?}: none of these suites works with the {algorithm:?} key \
                         of {key_option} {} (an ECDHE-RSA suite needs an RSA key, ECDHE-ECDSA an ECDSA one)",
                        key_path.display()
                    ));
                }
            }
        }
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|err| self.versions_error(err))?;
        let builder = match (&self.ca_certs, self.client_certs) {
            (ca, ClientCerts::None) => {
                // Asked for no client certificate, the file is not used (a
                // startup warning says so), but a wrong one is still an
                // error, as gunicorn's and uvicorn's load it whatever.
                if let Some(ca) = ca {
                    load_certificates(ca, "--ssl-ca-certs")?;
                }
                builder.with_no_client_auth()
            }
            (None, _) => return Err(NO_CA.into()),
            (Some(ca), reqs) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certificates(ca, "--ssl-ca-certs")? {
                    roots.add(cert).map_err(|err| {
                        format!(
                            "--ssl-ca-certs {}: a certificate is not usable as a CA: {err}",
                            ca.display()
                        )
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                );
                let verifier = match reqs {
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|err| format!("--ssl-ca-certs {}: {err}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // Kept to say why rustls could not use them, if it cannot.
        let key_copy = key.clone_key();
        let chain_copy = chain.clone();
        let mut config = builder.with_single_cert(chain, key).map_err(|err| {
            let why = match &err {
                rustls::Error::General(_) => why_key_unusable(&key_copy).map(str::to_owned),
                rustls::Error::InconsistentKeys(_) => {
                    certificate_out_of_order(&chain_copy, &key_copy, &provider)
                }
                _ => None,
            };
            format!(
                "--ssl-certfile {} and {key_option} {}: {}",
                self.certfile.display(),
                key_path.display(),
                why.unwrap_or_else(|| describe_key_error(&err))
            )
        })?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        // One TLS 1.3 ticket: resumption without a stateful cache per worker.
        config.send_tls13_tickets = 1;
        Ok((Arc::new(config), server_cert))
    }

    /// What can be wrong with the settings alone, found before any file is
    /// read, so that it is a settings error (exit 2) like any other: a
    /// suite `--ssl-ciphers` names that rustls does not know, suites that
    /// leave no version `--ssl-min-version` allows, client certificates
    /// asked for without the CA that signs them. `build` meets each again.
    /// A warning when `--ssl-keyfile-password` is given for a key that is
    /// not encrypted: it does nothing, and more likely than not the key is
    /// another file than the one meant. (Unreadable files are the load's to
    /// report.)
    pub(crate) fn unused_password(&self) -> Option<String> {
        self.password.as_ref()?;
        let (path, option) = match &self.keyfile {
            Some(path) => (path, "--ssl-keyfile"),
            None => (&self.certfile, "--ssl-certfile"),
        };
        let text = std::fs::read(path).ok()?;
        let encrypted = contains(&text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || contains(&text, b"Proc-Type: 4,ENCRYPTED");
        (!encrypted && contains(&text, b"PRIVATE KEY-----")).then(|| {
            format!(
                "--ssl-keyfile-password does nothing: the key in {option} {} is not encrypted \
                 (is it the file meant?)",
                path.display()
            )
        })
    }

    pub(crate) fn check_settings(&self) -> Result<(), String> {
        let provider = Arc::new(self.provider()?);
        ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(self.versions())
            .map_err(|err| self.versions_error(err))?;
        if self.client_certs != ClientCerts::None && self.ca_certs.is_none() {
            return Err(NO_CA.into());
        }
        Ok(())
    }

    fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static FROM_TLS12: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self.min_version {
            MinVersion::Tls12 => &FROM_TLS12,
            MinVersion::Tls13 => &TLS13_ONLY,
        }
    }

    /// rustls refused the versions for want of a suite: its own words
    /// ("unexpected error: no usable cipher suites configured") read like a
    /// fault of the server's, so they are left out.
    fn versions_error(&self, err: rustls::Error) -> String {
        tracing::debug!("rustls: {err}");
        let or_tls12 = match self.min_version {
            MinVersion::Tls13 => ", or allow TLS 1.2 with --ssl-min-version 1.2",
            MinVersion::Tls12 => "",
        };
        format!(
            "--ssl-ciphers {:?} has no suite for TLS {} or newer: add a TLS 1.3 suite \
             (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256){or_tls12}",
            self.ciphers.as_deref().unwrap_or_default(),
            self.min_version
        )
    }

    /// aws-lc-rs's provider (rustls's default, which offers post-quantum key
    /// exchange, X25519MLKEM768, first), with only the suites `--ssl-ciphers`
    /// names.
    fn provider(&self) -> Result<CryptoProvider, String> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        let Some(names) = &self.ciphers else {
            return Ok(provider);
        };
        let names: Vec<&str> = names
            .split([':', ',', ' '])
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect();
        // uvicorn's default value is OpenSSL's "TLSv1": everything.
        if names
            .iter()
            .all(|name| ["tlsv1", "default", "all"].contains(&name.to_ascii_lowercase().as_str()))
        {
            return Ok(provider);
        }
        let known = provider.cipher_suites.clone();
        let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
        let mut lacking = Vec::new();
        for name in names {
            let found = known.iter().find(|suite| names_suite(name, suite));
            if found.is_none() && looks_like_openssl_suite(name) {
                // An OpenSSL suite rustls does not have (DHE, CBC): skipped,
                // as OpenSSL skips what it cannot use in a list it was given
                // (the startup warning names them: `lacking_suites`).
                lacking.push(name);
                continue;
            }
            let suite = found.ok_or_else(|| {
                format!(
                    "--ssl-ciphers: unknown cipher suite {name:?}; rsasgi (rustls) has {} \
                         (OpenSSL's names work too: {})",
                    known.iter().map(suite_name).collect::<Vec<_>>().join(", "),
                    known
                        .iter()
                        .map(openssl_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if !chosen.contains(suite) {
                chosen.push(*suite);
            }
        }
        if chosen.is_empty() {
            return Err(format!(
                "--ssl-ciphers: rsasgi (rustls) has none of the suites named ({}); it has {}",
                lacking.join(", "),
                known
                    .iter()
                    .map(openssl_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        provider.cipher_suites = chosen;
        Ok(provider)
    }
}

/// The names in an `--ssl-ciphers` list that are OpenSSL cipher suites
/// rustls does not have: finite-field Diffie-Hellman (`DHE-RSA-AES128-GCM-SHA256`),
/// CBC and the like, which a list carried over from gunicorn or uvicorn
/// (Mozilla's "intermediate", say) names beside the ones rustls has. They
/// are skipped with a warning rather than refused; a name that is not an
/// OpenSSL suite's (an expression such as `HIGH:!aNULL`) is still an error.
pub(crate) fn lacking_suites(ciphers: &str) -> Vec<String> {
    let known = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    ciphers
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|name| looks_like_openssl_suite(name))
        .filter(|name| !known.iter().any(|suite| names_suite(name, suite)))
        .map(str::to_owned)
        .collect()
}

/// OpenSSL's suite names: upper case, digits and dashes, with a cipher in
/// them (`ECDHE-RSA-AES128-SHA`, `DHE-RSA-CHACHA20-POLY1305`, `AES256-SHA`).
fn looks_like_openssl_suite(name: &str) -> bool {
    const CIPHERS: [&str; 6] = ["AES", "CHACHA20", "CAMELLIA", "ARIA", "DES", "SEED"];
    name.contains('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        && CIPHERS.iter().any(|cipher| name.contains(cipher))
}

/// What a TLS connection negotiated, for the ASGI `tls` extension and the
/// WSGI environ's mod_ssl names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsInfo {
    /// The server's certificate, PEM.
    pub server_cert: Option<Arc<str>>,
    /// The client's certificate chain, PEM, its own first.
    pub client_cert_chain: Vec<String>,
    /// The client certificate's subject, RFC 4514 (`CN=alice,O=Example`).
    pub client_cert_name: Option<String>,
    /// 0x0303 for TLS 1.2, 0x0304 for TLS 1.3.
    pub tls_version: u16,
    /// The IANA number of the cipher suite.
    pub cipher_suite: u16,
    /// OpenSSL's name of the cipher suite (mod_ssl's `SSL_CIPHER`).
    pub cipher_name: String,
}

impl TlsInfo {
    pub(crate) fn of(
        connection: &rustls::ServerConnection,
        server_cert: Option<Arc<str>>,
    ) -> TlsInfo {
        let peer = connection.peer_certificates().unwrap_or_default();
        let suite = connection.negotiated_cipher_suite();
        TlsInfo {
            server_cert,
            client_cert_chain: peer.iter().map(|cert| pem_of(cert)).collect(),
            client_cert_name: peer.first().and_then(|cert| subject_of(cert)),
            tls_version: connection.protocol_version().map_or(0, u16::from),
            cipher_suite: suite.map_or(0, |suite| u16::from(suite.suite())),
            cipher_name: suite.as_ref().map(openssl_name).unwrap_or_default(),
        }
    }

    /// mod_ssl's `SSL_PROTOCOL`.
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self.tls_version {
            0x0304 => "TLSv1.3",
            0x0303 => "TLSv1.2",
            _ => "",
        }
    }
}

/// A certificate as PEM text.
pub(crate) fn pem_of(cert: &CertificateDer<'_>) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", pkcs8::der::pem::LineEnding::LF, cert)
        .unwrap_or_default()
}

/// A certificate's subject as RFC 4514 text; `None` if it does not parse.
fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert).ok()?;
    Some(parsed.tbs_certificate.subject.to_string())
}

/// A suite's IANA name, as rustls spells it (TLS13_AES_128_GCM_SHA256).
pub(crate) fn suite_name(suite: &SupportedCipherSuite) -> String {
    let id = suite.suite();
    id.as_str().map_or_else(|| format!("{id:?}"), str::to_owned)
}

/// OpenSSL's name for each suite of aws-lc-rs's provider: what mod_ssl's
/// `SSL_CIPHER` holds and what uvicorn's `--ssl-ciphers` takes. TLS 1.3
/// suites have their IANA names there.
const OPENSSL_NAMES: [(CipherSuite, &str); 9] = [
    (
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_128_GCM_SHA256",
    ),
    (
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        "TLS_AES_256_GCM_SHA384",
    ),
    (
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

/// OpenSSL's name of a suite, or rustls's when OpenSSL has none listed.
pub(crate) fn openssl_name(suite: &SupportedCipherSuite) -> String {
    let id = suite.suite();
    OPENSSL_NAMES
        .iter()
        .find(|(known, _)| *known == id)
        .map_or_else(|| suite_name(suite), |(_, name)| (*name).to_string())
}

/// Whether `name` (from `--ssl-ciphers`) names `suite`, by rustls's name or
/// OpenSSL's, in any case.
fn names_suite(name: &str, suite: &SupportedCipherSuite) -> bool {
    suite_name(suite).eq_ignore_ascii_case(name) || openssl_name(suite).eq_ignore_ascii_case(name)
}

/// Every certificate in a PEM file, in order (the server's first, then the
/// intermediates).
fn load_certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let where_ = || format!("{option} {}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("{}: {}", where_(), describe_pem_error(&err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: {}", where_(), describe_pem_error(&err)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected PEM, '-----BEGIN CERTIFICATE-----')",
            where_()
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), or
/// PKCS#8 encrypted with `password`.
fn load_key(
    path: &Path,
    option: &str,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, String> {
    let where_ = || format!("{option} {}", path.display());
    let text = std::fs::read(path).map_err(|err| format!("{}: {err}", where_()))?;
    if contains(&text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password else {
            return Err(format!(
                "{}: the key is encrypted; give its password with --ssl-keyfile-password",
                where_()
            ));
        };
        return decrypt_pkcs8(&text, password).map_err(|err| format!("{}: {err}", where_()));
    }
    if contains(&text, b"Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{}: the key is encrypted the legacy OpenSSL way, which rsasgi does not read; \
             convert it with 'openssl pkcs8 -topk8 -in KEY -out KEY.p8' (PKCS#8, with a password \
             or with -nocrypt)",
            where_()
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|err| match err {
        pem::Error::NoItemsFound => format!(
            "{}: no private key in it (expected PEM, '-----BEGIN PRIVATE KEY-----', \
             'RSA PRIVATE KEY' or 'EC PRIVATE KEY')",
            where_()
        ),
        err => format!("{}: {}", where_(), describe_pem_error(&err)),
    })
}

fn decrypt_pkcs8(text: &[u8], password: &str) -> Result<PrivateKeyDer<'static>, String> {
    use pkcs8::der::Document;
    let text = std::str::from_utf8(text).map_err(|_| "the file is not PEM text".to_owned())?;
    let start = text
        .find("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        .unwrap_or_default();
    let end_marker = "-----END ENCRYPTED PRIVATE KEY-----";
    let end = text[start..]
        .find(end_marker)
        .map(|at| start + at + end_marker.len())
        .ok_or_else(|| "the encrypted key has no END line".to_owned())?;
    let (_, document) = Document::from_pem(&text[start..end])
        .map_err(|err| format!("the encrypted key is not valid PEM: {err}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
        .map_err(|err| format!("the encrypted key cannot be read: {err}"))?;
    let decrypted = info.decrypt(password).map_err(|_| {
        "cannot decrypt the key: wrong --ssl-keyfile-password (or an unsupported cipher; \
         PBES2 with AES is supported)"
            .to_owned()
    })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        decrypted.as_bytes().to_vec(),
    )))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn describe_pem_error(err: &pem::Error) -> String {
    match err {
        pem::Error::Io(err) => err.to_string(),
        pem::Error::NoItemsFound => "nothing in PEM format in it".into(),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 in a PEM section".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Why a key that rustls could not load is unusable, where the reason is
/// one to act on; its own message ("failed to parse private key as RSA,
/// ECDSA, or EdDSA") is the same for a key that is well formed but of a
/// size or kind aws-lc-rs refuses, which an operator would take for a
/// damaged file.
fn why_key_unusable(key: &PrivateKeyDer<'_>) -> Option<&'static str> {
    // id-RSASSA-PSS (1.2.840.113549.1.1.10), DER-encoded: the algorithm of
    // a PKCS#8 key restricted to PSS signatures, which comes in its first
    // bytes, after the version.
    const RSA_PSS: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
    ];
    let rsa = match key {
        PrivateKeyDer::Pkcs1(der) => aws_lc_rs::rsa::KeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if contains(&der[..der.len().min(24)], RSA_PSS) {
                return Some(
                    "it is an RSA-PSS key (one restricted to PSS signatures), which rsasgi's TLS \
                     (rustls with aws-lc-rs) cannot use; make a plain RSA key ('openssl genpkey \
                     -algorithm RSA -pkeyopt rsa_keygen_bits:2048') or an EC one, and a \
                     certificate for it",
                );
            }
            aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
        }
        _ => return None,
    };
    match rsa.err()?.description_() {
        "TooSmall" => Some(
            "the RSA key is shorter than 2048 bits, the least rsasgi's TLS (aws-lc-rs) accepts; \
             make a key of 2048 bits or more ('openssl genrsa -out KEY 2048') and a certificate \
             for it",
        ),
        "TooLarge" => Some(
            "the RSA key is longer than 8192 bits, the most rsasgi's TLS (aws-lc-rs) accepts; \
             make a key of 2048 to 8192 bits and a certificate for it",
        ),
        _ => None,
    }
}

/// When the key belongs to a certificate of the chain file other than the
/// first (a chain written CA first), which one: the server's own must come
/// first, as rustls takes it.
fn certificate_out_of_order(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Option<String> {
    let position = chain.iter().skip(1).position(|cert| {
        rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), provider).is_ok()
    })?;
    Some(format!(
        "the private key belongs to certificate {} of the file, not to the first: the server's \
         own certificate must come first, then the intermediates that sign it",
        position + 2
    ))
}

fn describe_key_error(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".into()
        }
        rustls::Error::General(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        other_key: PathBuf,
        other_cert: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let other_cert = rcgen::CertificateParams::new(vec!["other".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let path = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Files {
            cert: path("cert.pem", cert.pem()),
            key: path("key.pem", key.serialize_pem()),
            other_key: path("other.pem", other.serialize_pem()),
            other_cert: path("other-cert.pem", other_cert.pem()),
            _dir: dir,
        }
    }

    fn settings(files: &Files) -> TlsSettings {
        TlsSettings {
            certfile: files.cert.clone(),
            keyfile: Some(files.key.clone()),
            password: None,
            ca_certs: None,
            client_certs: ClientCerts::None,
            ciphers: None,
            min_version: MinVersion::Tls12,
        }
    }

    fn error(settings: &TlsSettings) -> String {
        settings.server_config(&[ALPN_H2]).unwrap_err()
    }

    #[test]
    fn a_certificate_and_its_key_make_a_config() {
        let files = files();
        let config = settings(&files)
            .server_config(&[ALPN_H2, ALPN_HTTP11])
            .unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_are_one_line_naming_them() {
        let files = files();
        let mut wrong = settings(&files);
        wrong.keyfile = Some(files.other_key.clone());
        let err = error(&wrong);
        assert!(err.contains("does not belong to the certificate"), "{err}");
        assert!(err.contains("--ssl-keyfile"), "{err}");

        // A chain written CA first: the key's certificate is the second.
        let mut reordered = settings(&files);
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain.pem");
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        let other = std::fs::read_to_string(&files.other_cert).unwrap();
        std::fs::write(&chain, format!("{other}{cert}")).unwrap();
        reordered.certfile = chain;
        let err = error(&reordered);
        assert!(
            err.contains("the private key belongs to certificate 2 of the file, not to the first"),
            "{err}"
        );

        let mut missing = settings(&files);
        missing.certfile = "/does/not/exist.pem".into();
        let err = error(&missing);
        assert!(
            err.starts_with("--ssl-certfile /does/not/exist.pem: "),
            "{err}"
        );

        let mut swapped = settings(&files);
        swapped.certfile = files.key.clone();
        let err = error(&swapped);
        assert!(err.contains("no certificate in it"), "{err}");

        let mut no_key = settings(&files);
        no_key.keyfile = Some(files.cert.clone());
        let err = error(&no_key);
        assert!(err.contains("no private key in it"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn client_certificates_need_a_ca() {
        let files = files();
        let mut optional = settings(&files);
        optional.client_certs = ClientCerts::Optional;
        assert!(error(&optional).contains("needs --ssl-ca-certs"));
        optional.ca_certs = Some(files.cert.clone());
        optional.server_config(&[ALPN_H2]).unwrap();
    }

    #[test]
    fn ciphers_by_name() {
        let files = files();
        let mut some = settings(&files);
        some.ciphers = Some("TLS13_AES_128_GCM_SHA256:tls13_chacha20_poly1305_sha256".into());
        some.server_config(&[]).unwrap();
        some.ciphers = Some("TLSv1".into());
        some.server_config(&[]).unwrap();
        // OpenSSL's names, as uvicorn's --ssl-ciphers takes them.
        some.ciphers = Some("ECDHE-RSA-AES128-GCM-SHA256:TLS_AES_256_GCM_SHA384".into());
        some.server_config(&[]).unwrap();
        some.ciphers = Some("HIGH:!aNULL".into());
        let err = error(&some);
        assert!(
            err.contains("unknown cipher suite \"HIGH\"")
                && err.contains("TLS13_AES_256_GCM_SHA384")
                && err.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
            "{err}"
        );
        // TLS 1.2 suites only, but TLS 1.3 required.
        some.ciphers = Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into());
        some.min_version = MinVersion::Tls13;
        let err = error(&some);
        assert!(
            err.contains("no suite for TLS 1.3 or newer: add a TLS 1.3 suite")
                && err.ends_with("or allow TLS 1.2 with --ssl-min-version 1.2")
                && !err.contains("unexpected error"),
            "{err}"
        );
        // Suites that cannot sign with the key (an ECDSA one here).
        some.ciphers = Some("ECDHE-RSA-AES128-GCM-SHA256".into());
        some.min_version = MinVersion::Tls12;
        assert!(
            error(&some).contains("none of these suites works with the ECDSA key"),
            "{}",
            error(&some)
        );
    }

    /// A client certificate signed by a CA the server trusts, and the
    /// server's settings asking for it.
    fn mutual(files: &Files, reqs: ClientCerts) -> (TlsSettings, rustls::ClientConfig) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(vec![]).unwrap();
        client_params.distinguished_name = rcgen::DistinguishedName::new();
        client_params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc");
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let client = client_params.signed_by(&client_key, &issuer).unwrap();
        let ca_path = files.cert.with_file_name("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let mut settings = settings(files);
        settings.ca_certs = Some(ca_path);
        settings.client_certs = reqs;

        let mut roots = RootCertStore::empty();
        let server_cert = CertificateDer::from_pem_file(&files.cert).unwrap();
        roots.add(server_cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![client.der().clone()],
            PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        (settings, client_config)
    }

    /// The server's side of a handshake with a client that has a
    /// certificate, over an in-memory pipe.
    async fn handshake(
        reqs: ClientCerts,
    ) -> tokio_rustls::server::TlsStream<tokio::io::DuplexStream> {
        let files = files();
        let (settings, client_config) = mutual(&files, reqs);
        let acceptor = tokio_rustls::TlsAcceptor::from(settings.server_config(&[ALPN_H2]).unwrap());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            connector.connect(name, client_io),
            acceptor.accept(server_io)
        );
        client.unwrap();
        server.unwrap()
    }

    #[tokio::test]
    async fn a_handshake_reports_what_was_negotiated() {
        let server = handshake(ClientCerts::Required).await;
        let info = TlsInfo::of(server.get_ref().1, Some(Arc::from("PEM")));
        assert_eq!(info.tls_version, 0x0304);
        assert_eq!(info.protocol_name(), "TLSv1.3");
        assert!(
            info.cipher_name.starts_with("TLS_") && !info.cipher_name.starts_with("TLS13_"),
            "{}",
            info.cipher_name
        );
        assert_ne!(info.cipher_suite, 0);
        assert_eq!(info.client_cert_chain.len(), 1);
        assert!(info.client_cert_chain[0].starts_with("-----BEGIN CERTIFICATE-----\n"));
        // RFC 4514: the last RDN first, special characters escaped.
        assert_eq!(
            info.client_cert_name.as_deref(),
            Some("CN=alice,O=Example\\, Inc")
        );
    }

    #[tokio::test]
    async fn a_client_offering_post_quantum_key_exchange_gets_it() {
        let server = handshake(ClientCerts::Optional).await;
        let group = server
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|group| group.name());
        // The hybrid of X25519 and ML-KEM-768 that browsers offer first: a
        // recording of today's traffic cannot be read later with a quantum
        // computer.
        assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    }

    #[test]
    fn option_values() {
        assert_eq!(ClientCerts::parse("2"), Ok(ClientCerts::Required));
        assert_eq!(ClientCerts::parse("Optional"), Ok(ClientCerts::Optional));
        assert!(ClientCerts::parse("maybe").is_err());
        assert_eq!(MinVersion::parse("1.3"), Ok(MinVersion::Tls13));
        assert_eq!(MinVersion::parse("TLSv1.2"), Ok(MinVersion::Tls12));
        assert!(MinVersion::parse("1.1").is_err());
    }
}
