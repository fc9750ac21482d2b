//! Throwaway PKI for tests: a CA and certificates it signs, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files of one certificate and its key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that signs leaf certificates.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_file: PathBuf,
}

impl TestCa {
    /// Creates a CA and writes its certificate to `dir/<name>-ca.crt`.
    pub fn new(dir: &Path, name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_file = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&cert_file, &cert_pem)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_file,
        })
    }

    /// Issues a server+client certificate for `names` (DNS names or IPs) and writes it.
    pub fn issue(
        &self,
        dir: &Path,
        file_stem: &str,
        common_name: &str,
        names: &[&str],
        orgs: &[&str],
    ) -> Result<CertFiles, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*n).try_into()?),
                });
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: dir.join(format!("{file_stem}.crt")),
            key: dir.join(format!("{file_stem}.key")),
        };
        let write = |p: &Path, s: String| {
            std::fs::write(p, s).map_err(|_| rcgen::Error::CouldNotParseCertificate)
        };
        write(&files.cert, cert.pem())?;
        write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}

/// An RSA-free service-account signing key pair (ECDSA P-256), as PEM files.
pub fn key_pair_files(dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), rcgen::Error> {
    let key = KeyPair::generate()?;
    let (private, public) = (
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.pub")),
    );
    std::fs::write(&private, key.serialize_pem())
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    std::fs::write(&public, key.public_key_pem())
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    Ok((private, public))
}
