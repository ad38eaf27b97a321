//! TLS for [`super::http`]: a rustls server configuration from a PEM
//! certificate chain and key, offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Load it in the worker, at its start (see the example's `--tls-cert` and
//! `--tls-key`): each new worker then reads the files again, so a graceful
//! cycle (SIGHUP, `systemctl reload`, a new release) serves a renewed
//! certificate while the old worker finishes its connections with the old
//! one. That is the certificate-rotation story: renew the files in place
//! (write, then rename), then cycle. A worker whose files do not load exits
//! before it is ready, naming the file and the cause, and the old worker
//! serves on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load the TLS {what} from {}: {reason}", .path.display())]
    File {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an
    /// unsupported key type).
    #[error("cannot use the TLS certificate {} with the key {}: {reason}", .cert.display(), .key.display())]
    Pair {
        /// The certificate chain's file.
        cert: PathBuf,
        /// The key's file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// A server configuration from `cert` (a PEM chain, leaf first) and `key`
/// (a PEM PKCS#8, PKCS#1 or SEC1 private key), with ALPN `h2` and
/// `http/1.1`, TLS 1.2 and 1.3 on ring.
pub fn config_from_pem(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let file = |what: &'static str, path: &Path, reason: String| Error::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file("certificate chain", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file("certificate chain", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file(
            "certificate chain",
            cert,
            "no CERTIFICATE block in it".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file(
            "private key",
            key,
            format!("{e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"),
        )
    })?;
    let pair = |reason: String| Error::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| pair(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_pair_loads_with_alpn_and_each_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let config = config_from_pem(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let missing = dir.path().join("missing.crt");
        let err = config_from_pem(&missing, &key).unwrap_err().to_string();
        assert!(
            err.contains("certificate chain") && err.contains("missing.crt"),
            "{err}"
        );
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = config_from_pem(&empty, &key).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
        let err = config_from_pem(&cert, &empty).unwrap_err().to_string();
        assert!(
            err.contains("private key") && err.contains("empty.crt"),
            "{err}"
        );
        // Another pair's key does not match this certificate.
        let (_, other_key) = pair(dir.path(), "b");
        let err = config_from_pem(&cert, &other_key).unwrap_err().to_string();
        assert!(err.starts_with("cannot use the TLS certificate"), "{err}");
    }
}
