//! Test certificates: a throw-away certificate authority and a leaf for `localhost`.
//!
//! Nothing here is fit for production: the keys live in memory, in PEM, for
//! the length of a test run.

use std::fmt;
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::{Error, Result};

/// A certificate authority made at run time and a server certificate it signed.
///
/// The server certificate covers the DNS name `localhost` and the IP address
/// `127.0.0.1`. A client trusts the server by adding [`ca_pem`](Self::ca_pem) to
/// its roots; nothing is installed in the system's trust store.
///
/// ```
/// use zen_websocket::testing::TestCertificates;
///
/// let certs = TestCertificates::generate()?;
/// assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(certs.key_pem.contains("PRIVATE KEY"));
/// // The private key never shows up in logs.
/// assert!(!format!("{certs:?}").contains("PRIVATE KEY"));
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Clone)]
pub struct TestCertificates {
    /// The CA certificate (PEM): the one certificate a client must trust.
    pub ca_pem: String,
    /// The server's leaf certificate (PEM), signed by the CA.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl TestCertificates {
    /// Make a new CA and a leaf for `localhost` / `127.0.0.1` signed by it (ECDSA P-256).
    ///
    /// Each call makes fresh keys. Fails with [`Error::Tls`] if the certificate
    /// library refuses the parameters, which does not happen in practice.
    pub fn generate() -> Result<TestCertificates> {
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zen-websocket test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).map_err(tls_error)?;

        let leaf_key = KeyPair::generate().map_err(tls_error)?;
        // `CertificateParams::new` turns "127.0.0.1" into an IP-address SAN.
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(tls_error)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.use_authority_key_identifier_extension = true;
        // ECDSA keys sign; they never encipher, so DigitalSignature is the only usage.
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .map_err(tls_error)?;

        Ok(TestCertificates {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The certificates of this process: generated on first use, then shared by
    /// every TLS [`MockServer`](super::MockServer), which keeps tests fast and
    /// lets one trusted CA serve a whole test binary.
    pub(crate) fn shared() -> Result<TestCertificates> {
        static SHARED: OnceLock<std::result::Result<TestCertificates, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| TestCertificates::generate().map_err(|e| e.to_string()))
            .clone()
            .map_err(|detail| Error::Tls { detail })
    }

    /// A `native_tls` acceptor serving the leaf certificate.
    pub(crate) fn acceptor(&self) -> Result<native_tls::TlsAcceptor> {
        let identity =
            native_tls::Identity::from_pkcs8(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
                .map_err(tls_error)?;
        native_tls::TlsAcceptor::new(identity).map_err(tls_error)
    }
}

impl fmt::Debug for TestCertificates {
    // The private key is a secret, even a throw-away one: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCertificates")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("[REDACTED]"))
            .finish()
    }
}

fn tls_error(e: impl fmt::Display) -> Error {
    Error::Tls {
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_into_native_tls() {
        let certs = TestCertificates::generate().unwrap();
        certs.acceptor().unwrap();
        native_tls::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap();
    }

    #[test]
    fn shared_certificates_are_made_once() {
        let a = TestCertificates::shared().unwrap();
        let b = TestCertificates::shared().unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
    }
}
