//! Keys, certificates and the two TLS verifiers: a pinned server certificate, and device
//! certificates that prove possession of the device key during the QUIC handshake.
//!
//! Devices authenticate with a self-signed client certificate made from their own key pair, so
//! the key is proven in the TLS 1.3 handshake itself (CertificateVerify), before any sync
//! message is read, without an extra round trip. The server then looks the key up in its own
//! device table. The device id and Automerge actor id are the first 16 bytes of the SHA-256 of
//! the certificate's SubjectPublicKeyInfo: every change is attributable to the device key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Why keys, certificates or TLS configuration could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating or reading a key or certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A fingerprint is not 64 hex digits.
    #[error("fingerprint must be 64 hex digits (SHA-256 of the server certificate)")]
    BadFingerprint,
}

/// A key pair with its self-signed certificate, as DER.
#[derive(Clone)]
pub struct KeyAndCert {
    pub key_pkcs8: Vec<u8>,
    pub cert: Vec<u8>,
}

impl KeyAndCert {
    /// Makes a new ECDSA P-256 key pair and a self-signed certificate for `name`.
    pub fn generate(name: &str) -> Result<KeyAndCert, TlsError> {
        let err = |e: rcgen::Error| TlsError::Certificate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .map_err(err)?
            .self_signed(&key)
            .map_err(err)?;
        Ok(KeyAndCert {
            key_pkcs8: key.serialize_der(),
            cert: cert.der().to_vec(),
        })
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.cert.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone())),
        )
    }
}

/// SHA-256 of a certificate, the fingerprint a device pins.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses a 64-hex-digit fingerprint.
pub fn parse_fingerprint(hex_str: &str) -> Result<[u8; 32], TlsError> {
    let bytes = hex::decode(hex_str.trim()).map_err(|_| TlsError::BadFingerprint)?;
    bytes.try_into().map_err(|_| TlsError::BadFingerprint)
}

/// The device id (and actor id) bound to a device certificate's public key.
pub fn device_key_id(cert_der: &[u8]) -> Result<[u8; 16], TlsError> {
    let cert = CertificateDer::from(cert_der);
    let parsed = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| TlsError::Certificate(format!("unreadable certificate: {e:?}")))?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_ref()[..16]);
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The three handshake-signature methods that rustls's server and client verifier traits
/// share word for word, delegated to the verifier's `signatures` field.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.signatures.tls12(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.signatures.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.signatures.schemes()
        }
    };
}

/// Handshake signature checks with the provider's algorithms, as both verifiers need them:
/// whatever else each trusts, the peer must prove it holds its certificate's key.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS for a device: presents the device certificate, trusts only the pinned server certificate.
pub fn client_config(
    device: &KeyAndCert,
    pinned: [u8; 32],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let (chain, key) = device.chain_and_key();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            pinned,
            signatures: Signatures(provider),
        }))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![fieldsync_proto::protocol::ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// TLS for the server: its own certificate, and a device certificate required of every client.
pub fn server_config(server: &KeyAndCert) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let (chain, key) = server.chain_and_key();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(DeviceKeys {
            signatures: Signatures(provider),
        }))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![fieldsync_proto::protocol::ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// Accepts exactly the server certificate whose SHA-256 was learned at enrollment.
#[derive(Debug)]
struct PinnedServer {
    pinned: [u8; 32],
    signatures: Signatures,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    handshake_signatures!();
}

/// Requires a client certificate and checks the handshake signature made with its key; whether
/// the key belongs to an enrolled, unrevoked device is decided from the server's tables.
#[derive(Debug)]
struct DeviceKeys {
    signatures: Signatures,
}

impl ClientCertVerifier for DeviceKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        device_key_id(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    handshake_signatures!();
}
